"""Verification: a public computation, done in software for every mechanism software knows
(no card round trips); other mechanisms are the card's."""

from __future__ import annotations

from typing import Any

from shim.attributes import boolean, ulong
from shim.call import Call
from shim.constants import CKA, CKK, CKO, CKR
from shim.errors import PKCS11Error
from shim.handlers.operation import hmac_operation, mech_type, not_active
from shim.handlers.sessions import require_session
from shim.marshal import read_bytes, read_mechanism
from shim.soft import card
from shim.soft.operations import CardOperation
from shim.soft.sessions import Session, VerifyOperation
from shim.soft.state import CompletionState
from shim.soft.verify import VERIFY_MECHANISMS, Verifier, public_key
from shim.spec import TAKES_PARAMETER

_KEY_ATTRS = (CKA.CLASS, CKA.KEY_TYPE, CKA.VERIFY, CKA.EC_PARAMS, CKA.EC_POINT, CKA.MODULUS, CKA.PUBLIC_EXPONENT)


def _key_attrs(st: CompletionState, h: int, h_key: int) -> dict[int, bytes]:
    if st.objects.is_shim_handle(int(h_key)):
        return st.objects.require(int(h_key)).attrs
    if h_key == 0:
        raise PKCS11Error(CKR.KEY_HANDLE_INVALID, "handle 0")
    try:
        return card.read_attributes(st.card, h, h_key, _KEY_ATTRS)
    except PKCS11Error as e:
        if e.rv == CKR.OBJECT_HANDLE_INVALID:
            raise PKCS11Error(CKR.KEY_HANDLE_INVALID, "no such key on the card") from None
        raise


def verify_init(st: CompletionState, call: Call, h: int, pmech: Any, h_key: int) -> int:
    s = require_session(st, h)
    mech = mech_type(pmech)
    if s.verify is not None:
        return CKR.OPERATION_ACTIVE
    op: VerifyOperation | None = hmac_operation(st, h_key, mech, CKA.VERIFY)
    if op is None and mech not in VERIFY_MECHANISMS:
        rv = int(st.card["C_VerifyInit"](h, pmech, h_key))
        if rv == CKR.OK:
            s.verify = CardOperation(mech)
        return rv
    if op is None:
        attrs = _key_attrs(st, h, h_key)
        if ulong(attrs.get(CKA.CLASS)) != CKO.PUBLIC_KEY:
            raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "verification needs a public key object")
        if not boolean(attrs.get(CKA.VERIFY), True):
            raise PKCS11Error(CKR.KEY_FUNCTION_NOT_PERMITTED, "key has CKA_VERIFY=FALSE")
        if ulong(attrs.get(CKA.KEY_TYPE)) not in (CKK.EC, CKK.RSA, CKK.EC_EDWARDS):
            raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "unsupported key type")
        m = read_mechanism(pmech, takes_parameter=mech in TAKES_PARAMETER)
        op = Verifier(mech, m.parameter, public_key(attrs))
    s.verify = op
    return CKR.OK


def _finish(s: Session, call: Call, op: VerifyOperation, sig: bytes) -> int:
    """The operation ends whatever the verdict; raises CKR_SIGNATURE_INVALID / _LEN_RANGE."""
    s.verify = None
    call.src = "soft"
    assert not isinstance(op, CardOperation)
    op.verify(sig)
    return CKR.OK


def verify(st: CompletionState, call: Call, h: int, pdata: Any, n: int, psig: Any, nsig: int) -> int:
    s = st.sessions.get(int(h))
    op = s.verify if s is not None else None
    if s is None or op is None:
        return not_active(st, s is not None, "C_Verify", h, pdata, n, psig, nsig)
    if op.on_card:
        rv = int(st.card["C_Verify"](h, pdata, n, psig, nsig))
        s.verify = None
        call.src = "card"
        return rv
    try:
        op.update(read_bytes(pdata, n))
        return _finish(s, call, op, read_bytes(psig, nsig))
    finally:
        s.verify = None


def verify_update(st: CompletionState, call: Call, h: int, ppart: Any, n: int) -> int:
    s = st.sessions.get(int(h))
    op = s.verify if s is not None else None
    if s is None or op is None:
        return not_active(st, s is not None, "C_VerifyUpdate", h, ppart, n)
    if op.on_card:
        return int(st.card["C_VerifyUpdate"](h, ppart, n))
    op.update(read_bytes(ppart, n))
    return CKR.OK


def verify_final(st: CompletionState, call: Call, h: int, psig: Any, nsig: int) -> int:
    s = st.sessions.get(int(h))
    op = s.verify if s is not None else None
    if s is None or op is None:
        return not_active(st, s is not None, "C_VerifyFinal", h, psig, nsig)
    if op.on_card:
        rv = int(st.card["C_VerifyFinal"](h, psig, nsig))
        s.verify = None
        call.src = "card"
        return rv
    try:
        return _finish(s, call, op, read_bytes(psig, nsig))
    finally:
        s.verify = None
