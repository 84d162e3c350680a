"""What the backend can do, per slot, learnt once and remembered.

Mechanisms and their info come from C_GetMechanismList/C_GetMechanismInfo on
first use of a slot (minus ``[mask] mechanisms``); functions that answered
CKR_FUNCTION_NOT_SUPPORTED (or OpenSC's CKR_ARGUMENTS_BAD for session public
key C_CreateObject) are remembered, so the next call goes to software without a
card round trip.  Decisions on the signing hot path are dictionary look-ups.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shim import cabi
from shim.constants import CKR


@dataclass(frozen=True)
class MechInfo:
    min_key: int
    max_key: int
    flags: int


class Capabilities:
    def __init__(self, card: Mapping[str, Callable[..., int]], masked_functions: frozenset[str],
                 masked_mechanisms: frozenset[int]) -> None:
        self._card = card
        self._masked_mechs = masked_mechanisms
        self._missing: set[str] = set(masked_functions)
        self._mechs: dict[int, dict[int, MechInfo]] = {}
        self._lock = threading.Lock()

    # -- functions -----------------------------------------------------------------
    def lacks(self, fn: str) -> bool:
        return fn in self._missing

    def remember_missing(self, fn: str) -> None:
        self._missing.add(fn)

    def missing(self) -> frozenset[str]:
        return frozenset(self._missing)

    # -- mechanisms ----------------------------------------------------------------
    def mechanisms(self, slot: int) -> dict[int, MechInfo]:
        """The card's mechanisms of ``slot`` (masked ones removed), cached."""
        mechs = self._mechs.get(slot)
        if mechs is None:
            mechs = self._probe(slot)
            with self._lock:
                self._mechs[slot] = mechs
        return mechs

    def card_can(self, slot: int, mech: int, flag: int) -> bool:
        info = self.mechanisms(slot).get(mech)
        return info is not None and bool(info.flags & flag)

    def forget(self) -> None:
        """After C_Finalize / fork: a different card may sit in the reader next time."""
        with self._lock:
            self._mechs.clear()

    def _probe(self, slot: int) -> dict[int, MechInfo]:
        fn = self._card
        count = cabi.ffi.new("CK_ULONG *")
        rv = fn["C_GetMechanismList"](slot, cabi.NULL, count)
        if rv != CKR.OK:
            return {}
        arr = cabi.ffi.new("CK_MECHANISM_TYPE[]", max(int(count[0]), 1))
        rv = fn["C_GetMechanismList"](slot, arr, count)
        if rv != CKR.OK:
            return {}
        out: dict[int, MechInfo] = {}
        info = cabi.ffi.new("CK_MECHANISM_INFO *")
        for i in range(int(count[0])):
            m = int(arr[i])
            if m in self._masked_mechs:
                continue
            if fn["C_GetMechanismInfo"](slot, m, info) == CKR.OK:
                out[m] = MechInfo(int(info.ulMinKeySize), int(info.ulMaxKeySize), int(info.flags))
            else:
                out[m] = MechInfo(0, 0, 0)
        return out
