"""The completion layer over a fake card that signs with raw CKM_ECDSA and nothing else."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from unit_stack import FFI, P256_PARAMS, Stack, add_ec_private_key, ulong

from shim import cabi
from shim.constants import CKA, CKK, CKM, CKO, CKR, MechanismFlag, SessionFlag
from shim.layers.completion import OVERRIDES
from shim.soft.hashsign import HashThenSign
from shim.soft.objects import HANDLE_BASE
from shim.soft.operations import CardOperation
from shim.soft.sessions import Session


def _open(stack: Stack) -> int:
    assert stack.entries["C_Initialize"](cabi.NULL) == CKR.OK
    h = FFI.new("CK_SESSION_HANDLE *")
    assert stack.entries["C_OpenSession"](1, SessionFlag.SERIAL_SESSION, cabi.NULL, cabi.NULL, h) == CKR.OK
    return int(h[0])


def _template(attrs: dict[int, bytes]) -> tuple[Any, list[Any]]:
    t = FFI.new("CK_ATTRIBUTE[]", len(attrs))
    keep = []
    for i, (k, v) in enumerate(attrs.items()):
        buf = FFI.new("CK_BYTE[]", v)
        keep.append(buf)
        t[i].type, t[i].pValue, t[i].ulValueLen = k, buf, len(v)
    return t, keep


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return b"\x04" + bytes([len(raw)]) + raw  # DER OCTET STRING, as CKA_EC_POINT holds it


def _last_call(stack: Stack) -> dict[str, Any]:
    return [json.loads(x) for x in stack.log.read_text().splitlines()][-1]  # type: ignore[no-any-return]


def test_open_session_records_a_typed_session_and_close_forgets_it(stack: Stack) -> None:
    h = _open(stack)
    s = stack.completion.state.sessions.get(h)
    assert isinstance(s, Session) and s.slot == 1 and s.sign is None and s.find is None
    assert stack.entries["C_CloseSession"](h) == CKR.OK
    assert stack.completion.state.sessions.get(h) is None


def test_hashed_ecdsa_is_hashed_in_software_and_signed_raw_by_the_card(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA_SHA256})
    assert stack.entries["C_SignInit"](h, mech, key) == CKR.OK
    assert isinstance(stack.completion.state.sessions.get(h).sign, HashThenSign)  # type: ignore[union-attr]
    data = b"example.zone. 3600 IN DNSKEY 257 3 13"
    sig, n = FFI.new("CK_BYTE[]", 64), FFI.new("CK_ULONG *", 64)
    assert stack.entries["C_Sign"](h, FFI.new("CK_BYTE[]", data), len(data), sig, n) == CKR.OK
    signed = FFI.new("unsigned char[]", 64)
    assert card.fake_last_input(signed, 64) == 32
    assert bytes(signed[0:32]) == hashlib.sha256(data).digest()
    assert card.fake_last_mechanism() == CKM.ECDSA
    rec = _last_call(stack)
    assert rec["src"] == "card" and rec["args"]["hashed_by"] == "soft"


def test_native_mechanism_goes_straight_to_the_card(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    assert stack.entries["C_SignInit"](h, mech, key) == CKR.OK
    assert stack.completion.state.sessions.get(h).sign is None  # type: ignore[union-attr]
    digest = bytes(range(32))
    sig, n = FFI.new("CK_BYTE[]", 64), FFI.new("CK_ULONG *", 64)
    assert stack.entries["C_Sign"](h, FFI.new("CK_BYTE[]", digest), 32, sig, n) == CKR.OK
    assert bytes(sig)[:32] == digest  # the fake's echo: the card got the caller's bytes


def test_verify_is_software_with_a_shim_public_key(stack: Stack, card: Any) -> None:
    h = _open(stack)
    priv = ec.generate_private_key(ec.SECP256R1())
    tmpl, keep = _template({CKA.CLASS: ulong(CKO.PUBLIC_KEY), CKA.KEY_TYPE: ulong(CKK.EC),
                            CKA.EC_PARAMS: P256_PARAMS, CKA.EC_POINT: _point(priv)})
    ph = FFI.new("CK_OBJECT_HANDLE *")
    assert stack.entries["C_CreateObject"](h, tmpl, 4, ph) == CKR.OK
    assert ph[0] >= HANDLE_BASE
    digest = hashlib.sha256(b"rrset").digest()
    r, s = utils.decode_dss_signature(priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
    good = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    for sig, want in ((good, CKR.OK), (good[:-1] + bytes([good[-1] ^ 1]), CKR.SIGNATURE_INVALID),
                      (good[:10], CKR.SIGNATURE_LEN_RANGE)):
        assert stack.entries["C_VerifyInit"](h, mech, ph[0]) == CKR.OK
        assert stack.entries["C_Verify"](h, FFI.new("CK_BYTE[]", digest), 32, FFI.new("CK_BYTE[]", sig),
                                         len(sig)) == want
    assert card.fake_calls(b"C_VerifyInit") == 0


def test_verify_with_a_mechanism_software_lacks_is_a_card_operation(stack: Stack, card: Any) -> None:
    h = _open(stack)
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.AES_CMAC})
    assert stack.entries["C_VerifyInit"](h, mech, 1) == CKR.FUNCTION_NOT_SUPPORTED  # the fake's answer
    assert stack.completion.state.sessions.get(h).verify is None  # type: ignore[union-attr]
    card.fake_force(b"C_VerifyInit", CKR.OK)
    assert stack.entries["C_VerifyInit"](h, mech, 1) == CKR.OK
    assert isinstance(stack.completion.state.sessions.get(h).verify, CardOperation)  # type: ignore[union-attr]


def test_digest_is_software_and_its_state_can_be_saved(stack: Stack, card: Any) -> None:
    h = _open(stack)
    assert stack.entries["C_DigestInit"](h, FFI.new("CK_MECHANISM *", {"mechanism": CKM.SHA256})) == CKR.OK
    assert stack.entries["C_DigestUpdate"](h, FFI.new("CK_BYTE[]", b"abc"), 3) == CKR.OK
    n = FFI.new("CK_ULONG *")
    assert stack.entries["C_GetOperationState"](h, cabi.NULL, n) == CKR.OK
    state = FFI.new("CK_BYTE[]", n[0])
    assert stack.entries["C_GetOperationState"](h, state, n) == CKR.OK
    out, olen = FFI.new("CK_BYTE[]", 32), FFI.new("CK_ULONG *", 32)
    assert stack.entries["C_DigestFinal"](h, out, olen) == CKR.OK
    assert bytes(out) == hashlib.sha256(b"abc").digest()
    assert stack.entries["C_SetOperationState"](h, state, n[0], 0, 0) == CKR.OK
    assert stack.entries["C_DigestUpdate"](h, FFI.new("CK_BYTE[]", b"d"), 1) == CKR.OK
    assert stack.entries["C_DigestFinal"](h, out, olen) == CKR.OK
    assert bytes(out) == hashlib.sha256(b"abcd").digest()
    assert card.fake_calls(b"C_DigestInit") == 0


def test_mechanism_list_adds_software_mechanisms_with_truthful_flags(stack: Stack) -> None:
    _open(stack)
    n = FFI.new("CK_ULONG *")
    assert stack.entries["C_GetMechanismList"](1, cabi.NULL, n) == CKR.OK
    arr = FFI.new("CK_MECHANISM_TYPE[]", n[0])
    assert stack.entries["C_GetMechanismList"](1, arr, n) == CKR.OK
    listed = set(arr)
    assert {CKM.ECDSA, CKM.SHA256, CKM.SHA256_HMAC, CKM.EC_KEY_PAIR_GEN} <= listed
    assert CKM.ECDSA_SHA256 not in listed  # works, but not listed (pkcs11-provider would multi-part)
    info = FFI.new("CK_MECHANISM_INFO *")
    assert stack.entries["C_GetMechanismInfo"](1, CKM.ECDSA_SHA256, info) == CKR.OK
    assert info.flags & MechanismFlag.SIGN and info.flags & MechanismFlag.VERIFY
    assert not info.flags & MechanismFlag.HW
    assert stack.entries["C_GetMechanismInfo"](1, CKM.ECDSA, info) == CKR.OK
    assert info.flags & MechanismFlag.HW and info.flags & MechanismFlag.VERIFY


def test_a_card_private_key_without_public_key_gets_a_derived_one(stack: Stack, card: Any) -> None:
    h = _open(stack)
    point = _point(ec.generate_private_key(ec.SECP256R1()))
    add_ec_private_key(card, point, kid=b"\x03", label=b"KEY MAN key")
    tmpl, keep = _template({CKA.CLASS: ulong(CKO.PUBLIC_KEY)})
    assert stack.entries["C_FindObjectsInit"](h, tmpl, 1) == CKR.OK
    found, n = FFI.new("CK_OBJECT_HANDLE[]", 4), FFI.new("CK_ULONG *")
    assert stack.entries["C_FindObjects"](h, found, 4, n) == CKR.OK
    assert stack.entries["C_FindObjectsFinal"](h) == CKR.OK
    assert n[0] == 1 and found[0] >= HANDLE_BASE
    buf = FFI.new("CK_BYTE[]", 128)
    attr = FFI.new("CK_ATTRIBUTE[]", 1)
    attr[0].type, attr[0].pValue, attr[0].ulValueLen = CKA.EC_POINT, buf, 128
    assert stack.entries["C_GetAttributeValue"](h, found[0], attr, 1) == CKR.OK
    assert bytes(buf[0:attr[0].ulValueLen]) == point


def test_random_mixes_the_card_rng_with_the_os(stack: Stack) -> None:
    h = _open(stack)
    out = FFI.new("CK_BYTE[]", 32)
    assert stack.entries["C_GenerateRandom"](h, out, 32) == CKR.OK
    assert bytes(out) != bytes(32)  # the fake's RNG gives zeros
    assert _last_call(stack)["args"]["card_rng"] is True


def test_a_card_without_sign_update_is_remembered(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    assert stack.entries["C_SignInit"](h, mech, key) == CKR.OK
    assert stack.entries["C_SignUpdate"](h, FFI.new("CK_BYTE[]", b"x"), 1) == CKR.FUNCTION_NOT_SUPPORTED
    assert stack.completion.state.caps.lacks("C_SignUpdate")


def test_finalize_forgets_sessions_and_objects(stack: Stack) -> None:
    h = _open(stack)
    tmpl, keep = _template({CKA.CLASS: ulong(CKO.DATA), CKA.VALUE: b"x"})
    ph = FFI.new("CK_OBJECT_HANDLE *")
    assert stack.entries["C_CreateObject"](h, tmpl, 2, ph) == CKR.OK
    assert stack.entries["C_Finalize"](cabi.NULL) == CKR.OK
    assert len(stack.completion.state.sessions) == 0 and stack.completion.state.objects.get(ph[0]) is None
    assert stack.entries["C_Initialize"](cabi.NULL) == CKR.OK


def test_a_function_no_layer_overrides_is_the_base_forwarder_under_the_gate(stack: Stack) -> None:
    base = stack.base.table()
    completion = stack.completion.table()
    fixups = stack.fixups.table()
    assert "C_Login" not in OVERRIDES and "C_GetSlotList" not in OVERRIDES
    assert completion["C_GetSlotList"].__name__ == base["C_GetSlotList"].__name__ == "forward_C_GetSlotList"
    assert fixups["C_GetSlotList"] is completion["C_GetSlotList"]  # no session, no rewrite: not wrapped
    assert fixups["C_Login"] is not completion["C_Login"]  # a session function: the removal check
    assert set(stack.guard.overrides()) == {"C_Initialize", "C_Finalize"}
