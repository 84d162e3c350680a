"""Signing: the card for the private key operation, software for the hashing a card lacks.

The hot path: C_SignInit with a mechanism the card signs with goes straight to
the card after two dictionary look-ups (cached capabilities); C_Sign then finds
no software operation in the session and forwards.
"""

from __future__ import annotations

from typing import Any

from shim import cabi
from shim.call import Call
from shim.constants import CKA, CKM, CKR, MechanismFlag
from shim.errors import PKCS11Error
from shim.handlers.operation import ends_operation, hmac_operation, mech_type, soft_output
from shim.handlers.sessions import require_session
from shim.marshal import read_bytes, read_mechanism
from shim.soft.hashsign import HASHED, HashThenSign
from shim.soft.hmac import Hmac
from shim.soft.sessions import Session
from shim.soft.state import CompletionState
from shim.spec import TAKES_PARAMETER

SIGN = int(MechanismFlag.SIGN)


def sign_init(st: CompletionState, call: Call, h: int, pmech: Any, h_key: int) -> int:
    s = require_session(st, h)
    mech = mech_type(pmech)
    if s.sign is not None:
        return CKR.OPERATION_ACTIVE
    op = hmac_operation(st, h_key, mech, CKA.SIGN)
    if op is not None:
        s.sign = op
        call.args["completion"] = "hmac"
        return CKR.OK
    if st.objects.is_shim_handle(int(h_key)):
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "shim public keys cannot sign")
    caps = st.caps
    native = caps.card_can(s.slot, mech, SIGN)
    spec = HASHED.get(mech)
    if spec is not None and caps.card_can(s.slot, spec.raw, SIGN) and (
            not native or caps.lacks("C_SignUpdate") or caps.lacks("C_SignFinal")):
        m = read_mechanism(pmech, takes_parameter=mech in TAKES_PARAMETER)
        raw = cabi.ffi.new("CK_MECHANISM *")
        raw.mechanism = spec.raw
        if spec.raw == CKM.RSA_PKCS_PSS:
            raw.pParameter, raw.ulParameterLen = pmech.pParameter, pmech.ulParameterLen
        hashed = HashThenSign(mech, m.parameter)
        rv = int(st.card["C_SignInit"](h, raw, h_key))
        if rv == CKR.OK:
            s.sign = hashed
            call.args["completion"] = f"hash-then-sign via {CKM(spec.raw).name}"
        return rv
    return int(st.card["C_SignInit"](h, pmech, h_key))  # the card decides (hot path)


def _card_sign(st: CompletionState, call: Call, s: Session, tbs: bytes, psig: Any, plen: Any) -> int:
    buf = cabi.ffi.new("CK_BYTE[]", tbs)
    rv = int(st.card["C_Sign"](s.handle, buf, len(tbs), psig, plen))
    if rv == CKR.OK and psig != cabi.NULL:
        s.sign = None
        call.src = "card"
        call.args["hashed_by"] = "soft"
        call.args["signature_len"] = int(plen[0])
    elif ends_operation(rv, psig):
        s.sign = None
    return rv


def _hmac_out(s: Session, call: Call, psig: Any, plen: Any, value: bytes) -> int:
    rv, delivered = soft_output(call, psig, plen, value)
    if delivered:
        s.sign = None
    return rv


def sign(st: CompletionState, call: Call, h: int, pdata: Any, n: int, psig: Any, plen: Any) -> int:
    s = st.sessions.get(int(h))
    op = s.sign if s is not None else None
    if op is None:
        rv = int(st.card["C_Sign"](h, pdata, n, psig, plen))
        if rv == CKR.OK and plen != cabi.NULL:
            call.args["signature_len"] = int(plen[0])
            if psig != cabi.NULL:
                call.src = "card"
        return rv
    assert s is not None
    data = read_bytes(pdata, n)
    if isinstance(op, Hmac):
        return _hmac_out(s, call, psig, plen, op.peek_with(data))
    return _card_sign(st, call, s, op.to_sign(data), psig, plen)


def sign_update(st: CompletionState, call: Call, h: int, ppart: Any, n: int) -> int:
    s = st.sessions.get(int(h))
    op = s.sign if s is not None else None
    if op is None:
        rv = int(st.card["C_SignUpdate"](h, ppart, n))
        if rv == CKR.FUNCTION_NOT_SUPPORTED:
            st.caps.remember_missing("C_SignUpdate")  # next C_SignInit completes in software
        return rv
    op.update(read_bytes(ppart, n))
    return CKR.OK


def sign_final(st: CompletionState, call: Call, h: int, psig: Any, plen: Any) -> int:
    s = st.sessions.get(int(h))
    op = s.sign if s is not None else None
    if op is None:
        rv = int(st.card["C_SignFinal"](h, psig, plen))
        if rv == CKR.OK and plen != cabi.NULL and psig != cabi.NULL:
            call.src = "card"
            call.args["signature_len"] = int(plen[0])
        return rv
    assert s is not None
    if isinstance(op, Hmac):
        return _hmac_out(s, call, psig, plen, op.peek())
    return _card_sign(st, call, s, op.to_sign(), psig, plen)
