"""Spec fixups: answers the backend gives that PKCS#11 v2.40 does not allow.

- Functions that take a key handle may report a bad one only as
  CKR_KEY_HANDLE_INVALID (or the unwrapping variant); SoftHSM answers
  CKR_OBJECT_HANDLE_INVALID, which C_SignInit's callers need not expect.  The
  functions and their replacement are read from the allowed-CKR table
  (:mod:`shim.spec`).
- OpenSC answers CKR_GENERAL_ERROR when the card is pulled in the middle of an
  APDU exchange; if the session's token is gone, the answer is
  CKR_DEVICE_REMOVED.  pcscd notices a removal a little after the card does, so
  the slot is asked a few times (on that error path only).
- After a card is re-inserted, OpenSC goes on answering a session's calls with
  CKR_DEVICE_REMOVED until someone asks C_GetSlotInfo of that slot, which
  pkcs11-provider never does: so when a session call meets a missing token,
  the slot is asked once, and the next call finds the new card.  The call's
  record says so (``slot_refreshed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shim import cabi
from shim.call import INTERNAL, Call, LayerFn, Table
from shim.constants import CKR, SlotFlag
from shim.errors import PKCS11Error
from shim.functions import BY_NAME
from shim.spec import ALLOWED


def _key_handle_rewrites() -> dict[str, dict[int, int]]:
    """Functions the spec denies CKR_OBJECT_HANDLE_INVALID but grants a ``*_KEY_HANDLE_INVALID``:
    the backend's OBJECT_HANDLE_INVALID becomes CKR_KEY_HANDLE_INVALID, or the function's only
    key-handle value (C_UnwrapKey: CKR_UNWRAPPING_KEY_HANDLE_INVALID)."""
    out: dict[str, dict[int, int]] = {}
    for fn, allowed in ALLOWED.items():
        keyed = sorted((r for r in allowed if r.name.endswith("KEY_HANDLE_INVALID")), key=lambda r: r.name)
        if fn in BY_NAME and keyed and CKR.OBJECT_HANDLE_INVALID not in allowed:
            out[fn] = {CKR.OBJECT_HANDLE_INVALID: CKR.KEY_HANDLE_INVALID if CKR.KEY_HANDLE_INVALID in keyed
                       else keyed[0]}
    return out


RV_REWRITES: dict[str, dict[int, int]] = _key_handle_rewrites()
#: A session call's answers that mean its token is not (or no longer) the one in the slot.
TOKEN_GONE = frozenset({CKR.DEVICE_REMOVED, CKR.TOKEN_NOT_PRESENT, CKR.SESSION_HANDLE_INVALID})
# Every function of a session may meet a pulled card.
REMOVAL_FNS = frozenset(f.name for f in BY_NAME.values() if f.params and f.params[0].ctype == "CK_SESSION_HANDLE")
OVERRIDES = frozenset(RV_REWRITES) | REMOVAL_FNS
_PROBES = 6
_PROBE_INTERVAL_S = 0.1


class Fixups:
    def __init__(self, below: Table, *, slot_of: Callable[[int], int | None]) -> None:
        self.below = below
        self._slot_of = slot_of  # the completion layer's session table

    def table(self) -> Table:
        return {name: self._fixed(name, fn) if name in OVERRIDES else fn for name, fn in self.below.items()}

    def _fixed(self, name: str, fn: LayerFn) -> LayerFn:
        rewrite = RV_REWRITES.get(name, {})
        probe = name in REMOVAL_FNS

        def fixed(call: Call, *args: Any) -> int:
            try:
                rv = fn(call, *args)
            except PKCS11Error as e:
                if e.rv in rewrite:
                    raise PKCS11Error(rewrite[e.rv], e.detail or f"backend returned {CKR(e.rv).name}") from None
                if probe and e.rv in TOKEN_GONE:
                    self.refresh_slot(call, args[0])
                if not (probe and e.rv == CKR.GENERAL_ERROR and not e.detail):
                    raise
                rv = e.rv  # a bare CKR_GENERAL_ERROR: judged like a returned one
            if rv == CKR.GENERAL_ERROR and probe and self.token_removed(args[0]):
                raise PKCS11Error(CKR.DEVICE_REMOVED, "backend returned CKR_GENERAL_ERROR; token removed")
            if probe and rv in TOKEN_GONE:
                self.refresh_slot(call, args[0])
            if rv in rewrite:
                call.error = call.error or f"backend returned {CKR(rv).name}"
                return rewrite[rv]
            return rv

        fixed.__name__ = f"fixed_{name}"
        return fixed

    def refresh_slot(self, call: Call, h: Any) -> None:
        """Ask the session's slot once, so the backend notices a re-inserted card (OpenSC)."""
        try:
            slot = self._slot_of(int(h))
            if slot is None:
                return
            rv = self.below["C_GetSlotInfo"](INTERNAL, slot, cabi.ffi.new("CK_SLOT_INFO *"))
            call.args["slot_refreshed"] = {"slot": slot, "rv": CKR(rv).name if rv in CKR._value2member_map_ else rv}
        except Exception:  # noqa: BLE001, S110 - keep the backend's answer
            pass

    def token_removed(self, h: Any) -> bool:
        """Is the token of session ``h`` gone?  Fixed tokens (SoftHSM, an HSM) answer at once."""
        try:
            slot = self._slot_of(int(h))
            if slot is None:
                return False
            info = cabi.ffi.new("CK_SLOT_INFO *")
            get_slot_info = self.below["C_GetSlotInfo"]
            for attempt in range(_PROBES):
                rv = get_slot_info(INTERNAL, slot, info)
                if attempt == 0 and rv == CKR.OK and not info.flags & SlotFlag.REMOVABLE_DEVICE:
                    return False
                if rv == CKR.DEVICE_REMOVED or (rv == CKR.OK and not info.flags & SlotFlag.TOKEN_PRESENT):
                    return True
                if rv != CKR.OK:
                    return False
                time.sleep(_PROBE_INTERVAL_S)
        except Exception:  # noqa: BLE001 - keep the backend's answer
            return False
        return False
