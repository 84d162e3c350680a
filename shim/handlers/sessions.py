"""Session bookkeeping: which slot a session belongs to, and the lifetime of its shim objects."""

from __future__ import annotations

from typing import Any

from shim import cabi
from shim.call import Call
from shim.constants import CKR
from shim.errors import PKCS11Error
from shim.soft.sessions import Session
from shim.soft.state import CompletionState


def require_session(st: CompletionState, h: int) -> Session:
    """The shim's record of session ``h``; sessions opened before the shim saw
    them (none normally) are adopted after asking the backend for their slot."""
    s = st.sessions.get(int(h))
    if s is not None:
        return s
    info = cabi.ffi.new("CK_SESSION_INFO *")
    rv = st.card["C_GetSessionInfo"](h, info)
    if rv != CKR.OK:
        raise PKCS11Error(rv, "unknown session")
    return st.sessions.open(int(h), int(info.slotID))


def open_session(st: CompletionState, call: Call, slot: int, flags: int, app: Any, notify: Any, ph: Any) -> int:
    rv = st.card["C_OpenSession"](slot, flags, app, notify, ph)
    if rv == CKR.OK and ph != cabi.NULL:
        handle = int(ph[0])
        call.args["opened"] = handle
        # A reused handle number (after C_Finalize) must not inherit old objects.
        st.objects.drop_session(handle)
        st.sessions.open(handle, int(slot))
    return int(rv)


def close_session(st: CompletionState, call: Call, h: int) -> int:
    rv = st.card["C_CloseSession"](h)
    if rv in (CKR.OK, CKR.SESSION_HANDLE_INVALID, CKR.SESSION_CLOSED):
        st.sessions.close(int(h))
        dropped = st.objects.drop_session(int(h))
        if dropped:
            call.args["objects_destroyed"] = dropped
    return int(rv)


def close_all_sessions(st: CompletionState, call: Call, slot: int) -> int:
    rv = st.card["C_CloseAllSessions"](slot)
    if rv == CKR.OK:
        st.sessions.close_slot(int(slot))
        st.objects.drop_slot(int(slot))
    return int(rv)


def finalize(st: CompletionState, call: Call, p_reserved: Any) -> int:
    """Session objects and capability caches go: a new C_Initialize starts clean."""
    rv = st.card["C_Finalize"](p_reserved)
    st.reset()
    return int(rv)
