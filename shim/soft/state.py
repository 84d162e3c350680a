"""The completion layer's state: what it learnt about the card and what it keeps itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shim.soft.capabilities import Capabilities
from shim.soft.objects import ObjectStore
from shim.soft.sessions import SessionTable

CardFn = Mapping[str, Callable[..., int]]  # function name -> the card's function (raw cffi arguments)


class CompletionState:
    def __init__(self, card: CardFn, *, mask_functions: frozenset[str] = frozenset(),
                 mask_mechanisms: frozenset[int] = frozenset(), advertise_keygen: bool = True,
                 eddsa_keygen_alias: bool = True) -> None:
        self.card = card  # the layer below, for the shim's own calls (never recorded)
        self.caps = Capabilities(card, mask_functions, mask_mechanisms)
        self.sessions = SessionTable()
        self.objects = ObjectStore()
        self.advertise_keygen = advertise_keygen
        self.eddsa_keygen_alias = eddsa_keygen_alias
        self.scanned_slots: set[int] = set()  # slots whose private keys were seen (derived keys made)
        # Card public keys replaced by a derived one (same CKA_ID, other label): hidden from
        # searches so that a lookup by id= still finds exactly one public key.
        self.shadowed: dict[int, set[int]] = {}

    def reset(self) -> None:
        """After fork or C_Finalize: no session survives, the card may change."""
        self.sessions.clear()
        self.objects.clear()
        self.caps.forget()
        self.scanned_slots.clear()
        self.shadowed.clear()
