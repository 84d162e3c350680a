"""Sign, verify and digest: the card for private key operations, software for the rest.

Hot path: C_SignInit with a mechanism the card signs with goes straight to the
card after two dictionary look-ups (cached capabilities); C_Sign then sees no
software operation in the session and forwards.  Verification and digests are
public computations and are always done in software (no card round trips;
state saving works); mechanisms software does not know are forwarded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shim.constants import CKA, CKK, CKM, CKO, CKR, MechanismFlag
from shim.dispatch import Call, handles
from shim.errors import PKCS11Error
from shim.ffi import NULL, ffi
from shim.handlers.sessions import session_state
from shim.marshal import read_bytes, read_mechanism, write_output
from shim.soft import card
from shim.soft.digest import HASHES, Digest
from shim.soft.hashsign import HASHED, HashThenSign
from shim.soft.hmac import HMACS, Hmac
from shim.soft.objects import ObjectStore, as_bool, as_ulong
from shim.soft.verify import VERIFY_MECHANISMS, Verifier, public_key

if TYPE_CHECKING:
    from shim.runtime import Shim

SIGN = int(MechanismFlag.SIGN)
_PARAMETERISED = frozenset({CKM.RSA_PKCS_PSS, CKM.SHA1_RSA_PKCS_PSS, CKM.SHA224_RSA_PKCS_PSS,
                            CKM.SHA256_RSA_PKCS_PSS, CKM.SHA384_RSA_PKCS_PSS, CKM.SHA512_RSA_PKCS_PSS})
_CARD = "card"  # marks a session operation the card runs
_VERIFY_ATTRS = (CKA.CLASS, CKA.KEY_TYPE, CKA.VERIFY, CKA.EC_PARAMS, CKA.EC_POINT, CKA.MODULUS,
                 CKA.PUBLIC_EXPONENT)


def _mech_type(pmech: Any) -> int:
    if pmech == NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL mechanism")
    return int(pmech.mechanism)


def _hmac_key(shim: Shim, h_key: int, mech: int, usage: int) -> Hmac | None:
    """An HMAC operation when ``h_key`` is a shim secret key, else None."""
    if not ObjectStore.is_shim_handle(int(h_key)):
        return None
    obj = shim.soft.objects.require(int(h_key))
    if as_ulong(obj.attrs.get(CKA.CLASS)) != CKO.SECRET_KEY:
        return None
    if mech not in HMACS:
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "shim secret keys serve HMAC mechanisms only")
    if not as_bool(obj.attrs.get(usage), True):
        raise PKCS11Error(CKR.KEY_FUNCTION_NOT_PERMITTED, f"key has {CKA(usage).name}=FALSE")
    return Hmac(mech, obj.attrs[CKA.VALUE])


# -- sign ----------------------------------------------------------------------------

def _operation(shim: Shim, h: int, kind: str) -> tuple[dict[str, Any] | None, Any]:
    """(the shim's session record or None, its active ``kind`` operation or None)."""
    st = shim.sessions.get(int(h))
    return st, (st.get(kind) if st else None)


def _ends_operation(rv: int, out: Any) -> bool:
    """PKCS#11 v2.40 5.2: a call ends its operation unless it was a length query
    (NULL buffer) or got CKR_BUFFER_TOO_SMALL."""
    return rv != CKR.BUFFER_TOO_SMALL and not (rv == CKR.OK and out == NULL)


def _soft_out(st: dict[str, Any], kind: str, call: Call, out: Any, plen: Any, value: bytes) -> int:
    """A software result (digest, HMAC) into the caller's buffer; the operation ends once delivered."""
    rv = write_output(out, plen, value)
    if rv == CKR.OK and out != NULL:
        st[kind] = None
        call.src = "soft"
    return rv


@handles("C_SignInit")
def sign_init(shim: Shim, call: Call, h: int, pmech: Any, h_key: int) -> int:
    st = session_state(shim, h)
    mech = _mech_type(pmech)
    if st.get("sign") is not None:
        return CKR.OPERATION_ACTIVE
    op = _hmac_key(shim, h_key, mech, CKA.SIGN)
    if op is not None:
        st["sign"] = op
        call.args["completion"] = "hmac"
        return CKR.OK
    if ObjectStore.is_shim_handle(int(h_key)):
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "shim public keys cannot sign")
    caps = shim.soft.caps
    slot = st["slot"]
    native = caps.card_can(slot, mech, SIGN)
    spec = HASHED.get(mech)
    if spec is not None and caps.card_can(slot, spec.raw, SIGN) and (
            not native or caps.lacks("C_SignUpdate") or caps.lacks("C_SignFinal")):
        m = read_mechanism(pmech, takes_parameter=mech in _PARAMETERISED)
        raw = ffi.new("CK_MECHANISM *")
        raw.mechanism = spec.raw
        if spec.raw == CKM.RSA_PKCS_PSS:
            raw.pParameter, raw.ulParameterLen = pmech.pParameter, pmech.ulParameterLen
        hashed = HashThenSign(mech, m.parameter)
        rv = int(shim.backend.fn["C_SignInit"](h, raw, h_key))
        if rv == CKR.OK:
            st["sign"] = hashed
            call.args["completion"] = f"hash-then-sign via {CKM(spec.raw).name}"
        return rv
    return int(shim.backend.fn["C_SignInit"](h, pmech, h_key))  # the card decides (hot path)


def _card_sign(shim: Shim, call: Call, st: dict[str, Any], h: int, tbs: bytes, psig: Any, plen: Any) -> int:
    buf = ffi.new("CK_BYTE[]", tbs)
    rv = int(shim.backend.fn["C_Sign"](h, buf, len(tbs), psig, plen))
    if rv == CKR.OK and psig != NULL:
        st["sign"] = None
        call.src = "card"
        call.args["hashed_by"] = "soft"
        call.args["signature_len"] = int(plen[0])
    elif _ends_operation(rv, psig):
        st["sign"] = None
    return rv


@handles("C_Sign")
def sign(shim: Shim, call: Call, h: int, pdata: Any, n: int, psig: Any, plen: Any) -> int:
    st, op = _operation(shim, h, "sign")
    if op is None:
        rv = int(shim.backend.fn["C_Sign"](h, pdata, n, psig, plen))
        if rv == CKR.OK and plen != NULL:
            call.args["signature_len"] = int(plen[0])
            if psig != NULL:
                call.src = "card"
        return rv
    assert st is not None
    data = read_bytes(pdata, n)
    if isinstance(op, Hmac):
        return _soft_out(st, "sign", call, psig, plen, op.peek_with(data))
    return _card_sign(shim, call, st, h, op.to_sign(data), psig, plen)


@handles("C_SignUpdate")
def sign_update(shim: Shim, call: Call, h: int, ppart: Any, n: int) -> int:
    st, op = _operation(shim, h, "sign")
    if op is None:
        rv = int(shim.backend.fn["C_SignUpdate"](h, ppart, n))
        if rv == CKR.FUNCTION_NOT_SUPPORTED:
            shim.soft.caps.remember_missing("C_SignUpdate")  # next C_SignInit completes in software
        return rv
    op.update(read_bytes(ppart, n))
    return CKR.OK


@handles("C_SignFinal")
def sign_final(shim: Shim, call: Call, h: int, psig: Any, plen: Any) -> int:
    st, op = _operation(shim, h, "sign")
    if op is None:
        rv = int(shim.backend.fn["C_SignFinal"](h, psig, plen))
        if rv == CKR.OK and plen != NULL and psig != NULL:
            call.src = "card"
            call.args["signature_len"] = int(plen[0])
        return rv
    assert st is not None
    if isinstance(op, Hmac):
        return _soft_out(st, "sign", call, psig, plen, op.peek())
    return _card_sign(shim, call, st, h, op.to_sign(), psig, plen)


# -- verify --------------------------------------------------------------------------
def _verify_key_attrs(shim: Shim, h: int, h_key: int) -> dict[int, bytes]:
    if ObjectStore.is_shim_handle(int(h_key)):
        return shim.soft.objects.require(int(h_key)).attrs
    if h_key == 0:
        raise PKCS11Error(CKR.KEY_HANDLE_INVALID, "handle 0")
    try:
        return card.read_attributes(shim.backend.fn, h, h_key, _VERIFY_ATTRS)
    except PKCS11Error as e:
        if e.rv == CKR.OBJECT_HANDLE_INVALID:
            raise PKCS11Error(CKR.KEY_HANDLE_INVALID, "no such key on the card") from None
        raise


@handles("C_VerifyInit")
def verify_init(shim: Shim, call: Call, h: int, pmech: Any, h_key: int) -> int:
    st = session_state(shim, h)
    mech = _mech_type(pmech)
    if st.get("verify") is not None:
        return CKR.OPERATION_ACTIVE
    op: Any = _hmac_key(shim, h_key, mech, CKA.VERIFY)
    if op is None and mech not in VERIFY_MECHANISMS:
        rv = int(shim.backend.fn["C_VerifyInit"](h, pmech, h_key))
        if rv == CKR.OK:
            st["verify"] = _CARD
        return rv
    if op is None:
        attrs = _verify_key_attrs(shim, h, h_key)
        if as_ulong(attrs.get(CKA.CLASS)) != CKO.PUBLIC_KEY:
            raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "verification needs a public key object")
        if not as_bool(attrs.get(CKA.VERIFY), True):
            raise PKCS11Error(CKR.KEY_FUNCTION_NOT_PERMITTED, "key has CKA_VERIFY=FALSE")
        if as_ulong(attrs.get(CKA.KEY_TYPE)) not in (CKK.EC, CKK.RSA, CKK.EC_EDWARDS):
            raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "unsupported key type")
        m = read_mechanism(pmech, takes_parameter=mech in _PARAMETERISED)
        op = Verifier(mech, m.parameter, public_key(attrs))
    st["verify"] = op
    return CKR.OK


def _finish_verify(st: dict[str, Any], call: Call, op: Any, sig: bytes) -> int:
    st["verify"] = None
    call.src = "soft"
    op.verify(sig)  # raises CKR_SIGNATURE_INVALID / _LEN_RANGE
    return CKR.OK



def _not_active(shim: Shim, st: dict[str, Any] | None, name: str, *args: Any) -> int:
    """No shim-side verify/digest operation on this session.  Every Init of
    these goes through the shim and is remembered, so for a known session the
    answer is CKR_OPERATION_NOT_INITIALIZED — not the "not supported" of a card
    that lacks the function, nor OpenSC's CKR_ARGUMENTS_BAD.  Unknown sessions
    are the card's to judge."""
    if st is not None:
        return CKR.OPERATION_NOT_INITIALIZED
    rv = int(shim.backend.fn[name](*args))
    return CKR.SESSION_HANDLE_INVALID if rv == CKR.FUNCTION_NOT_SUPPORTED else rv


@handles("C_Verify")
def verify(shim: Shim, call: Call, h: int, pdata: Any, n: int, psig: Any, nsig: int) -> int:
    st, op = _operation(shim, h, "verify")
    if op is None:
        return _not_active(shim, st, "C_Verify", h, pdata, n, psig, nsig)
    if op == _CARD:
        rv = int(shim.backend.fn["C_Verify"](h, pdata, n, psig, nsig))
        if st is not None and op == _CARD:
            st["verify"] = None
            call.src = "card"
        return rv
    assert st is not None
    try:
        op.update(read_bytes(pdata, n))
        return _finish_verify(st, call, op, read_bytes(psig, nsig))
    finally:
        st["verify"] = None


def _updater(kind: str, name: str) -> Callable[..., int]:
    """C_VerifyUpdate / C_DigestUpdate: feed the shim's operation, or the card's."""

    def update(shim: Shim, call: Call, h: int, ppart: Any, n: int) -> int:
        st = shim.sessions.get(int(h))
        op = st.get(kind) if st else None
        if op is None:
            return _not_active(shim, st, name, h, ppart, n)
        if op == _CARD:
            return int(shim.backend.fn[name](h, ppart, n))
        op.update(read_bytes(ppart, n))
        return CKR.OK

    update.__name__ = f"{kind}_update"
    return handles(name)(update)


verify_update = _updater("verify", "C_VerifyUpdate")


@handles("C_VerifyFinal")
def verify_final(shim: Shim, call: Call, h: int, psig: Any, nsig: int) -> int:
    st, op = _operation(shim, h, "verify")
    if op is None:
        return _not_active(shim, st, "C_VerifyFinal", h, psig, nsig)
    if op == _CARD:
        rv = int(shim.backend.fn["C_VerifyFinal"](h, psig, nsig))
        if st is not None and op == _CARD:
            st["verify"] = None
            call.src = "card"
        return rv
    assert st is not None
    try:
        return _finish_verify(st, call, op, read_bytes(psig, nsig))
    finally:
        st["verify"] = None


# -- digest --------------------------------------------------------------------------
@handles("C_DigestInit")
def digest_init(shim: Shim, call: Call, h: int, pmech: Any) -> int:
    st = session_state(shim, h)
    mech = _mech_type(pmech)
    if st.get("digest") is not None:
        return CKR.OPERATION_ACTIVE
    if mech not in HASHES:
        rv = int(shim.backend.fn["C_DigestInit"](h, pmech))
        if rv == CKR.OK:
            st["digest"] = _CARD
        return rv
    st["digest"] = Digest(mech)  # parameters ignored: PowerDNS passes garbage for CKM_SHA_1
    return CKR.OK




@handles("C_Digest")
def digest(shim: Shim, call: Call, h: int, pdata: Any, n: int, out: Any, plen: Any) -> int:
    st, op = _operation(shim, h, "digest")
    if op is None:
        return _not_active(shim, st, "C_Digest", h, pdata, n, out, plen)
    assert st is not None  # an operation implies a known session
    if op == _CARD:
        rv = int(shim.backend.fn["C_Digest"](h, pdata, n, out, plen))
        if _ends_operation(rv, out):
            st["digest"] = None
        return rv
    if op.updated:
        st["digest"] = None
        raise PKCS11Error(CKR.OPERATION_ACTIVE, "C_Digest after C_DigestUpdate")
    return _soft_out(st, "digest", call, out, plen, op.peek_with(read_bytes(pdata, n)))


digest_update = _updater("digest", "C_DigestUpdate")


@handles("C_DigestKey")
def digest_key(shim: Shim, call: Call, h: int, h_key: int) -> int:
    st, op = _operation(shim, h, "digest")
    if op is None:
        return _not_active(shim, st, "C_DigestKey", h, h_key)
    if op == _CARD:
        return int(shim.backend.fn["C_DigestKey"](h, h_key))
    obj = shim.soft.objects.get(int(h_key))
    if obj is None or as_ulong(obj.attrs.get(CKA.CLASS)) != CKO.SECRET_KEY or CKA.VALUE in obj.secret_attrs:
        raise PKCS11Error(CKR.KEY_INDIGESTIBLE, "only extractable shim secret keys can be digested")
    op.update(obj.attrs[CKA.VALUE])
    return CKR.OK


@handles("C_DigestFinal")
def digest_final(shim: Shim, call: Call, h: int, out: Any, plen: Any) -> int:
    st, op = _operation(shim, h, "digest")
    if op is None:
        return _not_active(shim, st, "C_DigestFinal", h, out, plen)
    assert st is not None  # an operation implies a known session
    if op == _CARD:
        rv = int(shim.backend.fn["C_DigestFinal"](h, out, plen))
        if _ends_operation(rv, out):
            st["digest"] = None
        return rv
    return _soft_out(st, "digest", call, out, plen, op.peek())


# -- operation state -----------------------------------------------------------------
@handles("C_GetOperationState")
def get_operation_state(shim: Shim, call: Call, h: int, pstate: Any, plen: Any) -> int:
    st = session_state(shim, h)
    ops = {k: st.get(k) for k in ("digest", "sign", "verify")}
    soft = {k: v for k, v in ops.items() if v is not None and v != _CARD}
    if not soft:
        return int(shim.backend.fn["C_GetOperationState"](h, pstate, plen))
    if set(soft) != {"digest"} or any(v == _CARD for v in ops.values()):
        raise PKCS11Error(CKR.STATE_UNSAVEABLE, "only software digest state can be saved")
    call.src = "soft"
    return write_output(pstate, plen, soft["digest"].state())


@handles("C_SetOperationState")
def set_operation_state(shim: Shim, call: Call, h: int, pstate: Any, n: int, h_enc: int, h_auth: int) -> int:
    st = session_state(shim, h)
    blob = read_bytes(pstate, n)
    if not blob.startswith(b"SC4D"):
        return int(shim.backend.fn["C_SetOperationState"](h, pstate, n, h_enc, h_auth))
    st["digest"] = Digest.from_state(blob)
    call.src = "soft"
    return CKR.OK
