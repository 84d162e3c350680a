"""Session bookkeeping: which slot a session belongs to, for completions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shim.constants import CKR
from shim.dispatch import Call, handles
from shim.ffi import NULL

if TYPE_CHECKING:
    from shim.runtime import Shim


@handles("C_OpenSession")
def open_session(shim: Shim, call: Call, slot: int, flags: int, app: Any, notify: Any, ph: Any) -> int:
    rv = shim.backend.fn["C_OpenSession"](slot, flags, app, notify, ph)
    if rv == CKR.OK and ph != NULL:
        handle = int(ph[0])
        call.args["opened"] = handle
        shim.sessions[handle] = {"slot": int(slot)}
    return int(rv)


@handles("C_CloseSession")
def close_session(shim: Shim, call: Call, h: int) -> int:
    rv = shim.backend.fn["C_CloseSession"](h)
    if rv in (CKR.OK, CKR.SESSION_HANDLE_INVALID, CKR.SESSION_CLOSED):
        shim.sessions.pop(int(h), None)
    return int(rv)


@handles("C_CloseAllSessions")
def close_all(shim: Shim, call: Call, slot: int) -> int:
    rv = shim.backend.fn["C_CloseAllSessions"](slot)
    if rv == CKR.OK:
        for h in [h for h, s in shim.sessions.items() if s.get("slot") == int(slot)]:
            del shim.sessions[h]
    return int(rv)


@handles("C_FindObjects")
def find_objects(shim: Shim, call: Call, h: int, ph: Any, max_count: int, pcount: Any) -> int:
    rv = shim.backend.fn["C_FindObjects"](h, ph, max_count, pcount)
    if rv == CKR.OK and pcount != NULL and ph != NULL:
        call.args["found"] = [int(ph[i]) for i in range(min(int(pcount[0]), 16))]
    return int(rv)


@handles("C_Sign", "C_SignFinal")
def sign(shim: Shim, call: Call, h: int, *args: Any) -> int:
    rv = shim.backend.fn[call.fn](h, *args)
    plen = args[-1]
    if rv == CKR.OK and plen != NULL:
        call.args["signature_len"] = int(plen[0])
        if args[-2] != NULL:
            call.src = "card"
    return int(rv)
