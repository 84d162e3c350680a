"""Digests: always in software for the hashes software knows (no card round trips, and the
state can be saved); other mechanisms are the card's.  Operation state lives here too: only a
software digest's state can be saved."""

from __future__ import annotations

from typing import Any

from shim.attributes import ulong
from shim.call import Call
from shim.constants import CKA, CKO, CKR
from shim.errors import PKCS11Error
from shim.handlers.operation import ends_operation, mech_type, not_active, soft_output
from shim.handlers.sessions import require_session
from shim.marshal import read_bytes, write_output
from shim.soft.digest import HASHES, Digest
from shim.soft.operations import CardOperation
from shim.soft.sessions import Session
from shim.soft.state import CompletionState


def digest_init(st: CompletionState, call: Call, h: int, pmech: Any) -> int:
    s = require_session(st, h)
    mech = mech_type(pmech)
    if s.digest is not None:
        return CKR.OPERATION_ACTIVE
    if mech not in HASHES:
        rv = int(st.card["C_DigestInit"](h, pmech))
        if rv == CKR.OK:
            s.digest = CardOperation(mech)
        return rv
    s.digest = Digest(mech)  # parameters ignored: PowerDNS passes garbage for CKM_SHA_1
    return CKR.OK


def _soft_digest(s: Session, call: Call, out: Any, plen: Any, value: bytes) -> int:
    rv, delivered = soft_output(call, out, plen, value)
    if delivered:
        s.digest = None
    return rv


def digest(st: CompletionState, call: Call, h: int, pdata: Any, n: int, out: Any, plen: Any) -> int:
    s = st.sessions.get(int(h))
    op = s.digest if s is not None else None
    if s is None or op is None:
        return not_active(st, s is not None, "C_Digest", h, pdata, n, out, plen)
    if isinstance(op, CardOperation):
        rv = int(st.card["C_Digest"](h, pdata, n, out, plen))
        if ends_operation(rv, out):
            s.digest = None
        return rv
    if op.updated:
        s.digest = None
        raise PKCS11Error(CKR.OPERATION_ACTIVE, "C_Digest after C_DigestUpdate")
    return _soft_digest(s, call, out, plen, op.peek_with(read_bytes(pdata, n)))


def digest_update(st: CompletionState, call: Call, h: int, ppart: Any, n: int) -> int:
    s = st.sessions.get(int(h))
    op = s.digest if s is not None else None
    if s is None or op is None:
        return not_active(st, s is not None, "C_DigestUpdate", h, ppart, n)
    if op.on_card:
        return int(st.card["C_DigestUpdate"](h, ppart, n))
    op.update(read_bytes(ppart, n))
    return CKR.OK


def digest_key(st: CompletionState, call: Call, h: int, h_key: int) -> int:
    s = st.sessions.get(int(h))
    op = s.digest if s is not None else None
    if s is None or op is None:
        return not_active(st, s is not None, "C_DigestKey", h, h_key)
    if op.on_card:
        return int(st.card["C_DigestKey"](h, h_key))
    obj = st.objects.get(int(h_key))
    if obj is None or ulong(obj.attrs.get(CKA.CLASS)) != CKO.SECRET_KEY or CKA.VALUE in obj.secret_attrs:
        raise PKCS11Error(CKR.KEY_INDIGESTIBLE, "only extractable shim secret keys can be digested")
    op.update(obj.attrs[CKA.VALUE])
    return CKR.OK


def digest_final(st: CompletionState, call: Call, h: int, out: Any, plen: Any) -> int:
    s = st.sessions.get(int(h))
    op = s.digest if s is not None else None
    if s is None or op is None:
        return not_active(st, s is not None, "C_DigestFinal", h, out, plen)
    if isinstance(op, CardOperation):
        rv = int(st.card["C_DigestFinal"](h, out, plen))
        if ends_operation(rv, out):
            s.digest = None
        return rv
    return _soft_digest(s, call, out, plen, op.peek())


def get_operation_state(st: CompletionState, call: Call, h: int, pstate: Any, plen: Any) -> int:
    s = require_session(st, h)
    ops = (s.digest, s.sign, s.verify)
    if not any(op is not None and not op.on_card for op in ops):
        return int(st.card["C_GetOperationState"](h, pstate, plen))
    if not isinstance(s.digest, Digest) or s.sign is not None or s.verify is not None:
        raise PKCS11Error(CKR.STATE_UNSAVEABLE, "only software digest state can be saved")
    call.src = "soft"
    return write_output(pstate, plen, s.digest.state())


def set_operation_state(st: CompletionState, call: Call, h: int, pstate: Any, n: int, h_enc: int,
                        h_auth: int) -> int:
    s = require_session(st, h)
    blob = read_bytes(pstate, n)
    if not blob.startswith(b"SC4D"):
        return int(st.card["C_SetOperationState"](h, pstate, n, h_enc, h_auth))
    s.digest = Digest.from_state(blob)
    call.src = "soft"
    return CKR.OK
