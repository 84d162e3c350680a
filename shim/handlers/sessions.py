"""Session bookkeeping: which slot a session belongs to, its software
operations, and the lifetime of the shim's session objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shim.constants import CKR
from shim.dispatch import Call, handles
from shim.errors import PKCS11Error
from shim.ffi import NULL, ffi

if TYPE_CHECKING:
    from shim.runtime import Shim


def session_state(shim: Shim, h: int) -> dict[str, Any]:
    """The shim's record of session ``h``; sessions opened before the shim saw
    them (none normally) are adopted after asking the backend for their slot."""
    st = shim.sessions.get(int(h))
    if st is not None:
        return st  # type: ignore[no-any-return]
    info = ffi.new("CK_SESSION_INFO *")
    rv = shim.backend.fn["C_GetSessionInfo"](h, info)
    if rv != CKR.OK:
        raise PKCS11Error(rv, "unknown session")
    st = {"slot": int(info.slotID)}
    shim.sessions[int(h)] = st
    return st


@handles("C_OpenSession")
def open_session(shim: Shim, call: Call, slot: int, flags: int, app: Any, notify: Any, ph: Any) -> int:
    rv = shim.backend.fn["C_OpenSession"](slot, flags, app, notify, ph)
    if rv == CKR.OK and ph != NULL:
        handle = int(ph[0])
        call.args["opened"] = handle
        # A reused handle number (after C_Finalize) must not inherit old objects.
        shim.soft.objects.drop_session(handle)
        shim.sessions[handle] = {"slot": int(slot)}
    return int(rv)


@handles("C_CloseSession")
def close_session(shim: Shim, call: Call, h: int) -> int:
    rv = shim.backend.fn["C_CloseSession"](h)
    if rv in (CKR.OK, CKR.SESSION_HANDLE_INVALID, CKR.SESSION_CLOSED):
        shim.sessions.pop(int(h), None)
        dropped = shim.soft.objects.drop_session(int(h))
        if dropped:
            call.args["objects_destroyed"] = dropped
    return int(rv)


@handles("C_CloseAllSessions")
def close_all(shim: Shim, call: Call, slot: int) -> int:
    rv = shim.backend.fn["C_CloseAllSessions"](slot)
    if rv == CKR.OK:
        for h in [h for h, s in shim.sessions.items() if s.get("slot") == int(slot)]:
            del shim.sessions[h]
        shim.soft.objects.drop_slot(int(slot))
    return int(rv)
