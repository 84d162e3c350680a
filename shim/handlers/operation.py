"""What sign, verify and digest share: mechanism reading, when a call ends its
operation, software results into the caller's buffer, and shim HMAC keys."""

from __future__ import annotations

from typing import Any

from shim import cabi
from shim.attributes import boolean, ulong
from shim.call import Call
from shim.constants import CKA, CKO, CKR
from shim.errors import PKCS11Error
from shim.marshal import write_output
from shim.soft.hmac import HMACS, Hmac
from shim.soft.state import CompletionState


def mech_type(pmech: Any) -> int:
    if pmech == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL mechanism")
    return int(pmech.mechanism)


def ends_operation(rv: int, out: Any) -> bool:
    """PKCS#11 v2.40 5.2: a call ends its operation unless it was a length query
    (NULL buffer) or got CKR_BUFFER_TOO_SMALL."""
    return rv != CKR.BUFFER_TOO_SMALL and not (rv == CKR.OK and out == cabi.NULL)


def soft_output(call: Call, out: Any, plen: Any, value: bytes) -> tuple[int, bool]:
    """A software result (digest, HMAC) into the caller's buffer: (CK_RV, whether it was delivered,
    which ends the operation)."""
    rv = write_output(out, plen, value)
    delivered = rv == CKR.OK and out != cabi.NULL
    if delivered:
        call.src = "soft"
    return rv, delivered


def not_active(st: CompletionState, known: bool, name: str, *args: Any) -> int:
    """No shim-side verify/digest operation on this session.  Every Init of
    these goes through the shim and is remembered, so for a known session the
    answer is CKR_OPERATION_NOT_INITIALIZED — not the "not supported" of a card
    that lacks the function, nor OpenSC's CKR_ARGUMENTS_BAD.  Unknown sessions
    are the card's to judge."""
    if known:
        return CKR.OPERATION_NOT_INITIALIZED
    rv = int(st.card[name](*args))
    return CKR.SESSION_HANDLE_INVALID if rv == CKR.FUNCTION_NOT_SUPPORTED else rv


def hmac_operation(st: CompletionState, h_key: int, mech: int, usage: int) -> Hmac | None:
    """An HMAC operation when ``h_key`` is a shim secret key, else None."""
    if not st.objects.is_shim_handle(int(h_key)):
        return None
    obj = st.objects.require(int(h_key))
    if ulong(obj.attrs.get(CKA.CLASS)) != CKO.SECRET_KEY:
        return None
    if mech not in HMACS:
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "shim secret keys serve HMAC mechanisms only")
    if not boolean(obj.attrs.get(usage), True):
        raise PKCS11Error(CKR.KEY_FUNCTION_NOT_PERMITTED, f"key has {CKA(usage).name}=FALSE")
    return Hmac(mech, obj.attrs[CKA.VALUE])
