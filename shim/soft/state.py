"""The completion layer's process-wide state, one attribute of :class:`shim.runtime.Shim`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.soft.capabilities import Capabilities
from shim.soft.objects import ObjectStore

if TYPE_CHECKING:
    from shim.runtime import Shim


class Completion:
    def __init__(self, shim: Shim) -> None:
        cfg = shim.config
        self.caps = Capabilities(lambda: shim.backend, cfg.mask_functions, cfg.mask_mechanisms)
        self.objects = ObjectStore()
        self.advertise_keygen = cfg.advertise_keygen
        self.scanned_slots: set[int] = set()  # slots whose private keys were seen (derived keys made)
        # Card public keys replaced by a derived one (same CKA_ID, other label): hidden from
        # searches so that a lookup by id= still finds exactly one public key.
        self.shadowed: dict[int, set[int]] = {}

    def reset(self) -> None:
        """After fork or C_Finalize: no session survives, the card may change."""
        self.objects.clear()
        self.caps.forget()
        self.scanned_slots.clear()
        self.shadowed.clear()
