"""The PIV application alone (no pcscd): commands the OpenSC stack tests do not reach."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from virtualcard.apdu import tlv, tlv_dict
from virtualcard.piv import PIVCard, TripleDES
from virtualcard.profiles import ALG_3DES, ALG_AES128, ALG_ECCP384, ALG_RSA3072, get_profile
from virtualcard.provision import provision_defaults
from virtualcard.state import DEFAULT_MGMT_KEY, CardState

PIV_SELECT = bytes.fromhex("00a4040005a000000308")


@pytest.fixture
def piv(tmp_path: Path) -> PIVCard:
    state = CardState(tmp_path)
    provision_defaults(state)
    card = PIVCard(state, get_profile("fast"))
    assert card.process(PIV_SELECT)[-2:] == b"\x90\x00"
    return card


def apdu(ins: int, p1: int, p2: int, data: bytes = b"", cla: int = 0) -> bytes:
    if not data:
        return bytes([cla, ins, p1, p2, 0])
    if len(data) > 255:
        return bytes([cla, ins, p1, p2, 0]) + len(data).to_bytes(2, "big") + data + b"\x00\x00"
    return bytes([cla, ins, p1, p2, len(data)]) + data + b"\x00"


def ok(resp: bytes) -> bytes:
    assert resp[-2:] == b"\x90\x00", resp[-2:].hex()
    return resp[:-2]


def mutual_auth(card: PIVCard, alg: int, key: bytes) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.ECB()) if alg != ALG_3DES else None
    assert cipher is not None
    step1 = tlv_dict(tlv_dict(ok(card.process(apdu(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80, b""))))))[0x7C])
    d = cipher.decryptor()
    witness = d.update(step1[0x80]) + d.finalize()
    challenge = bytes(range(16))
    resp = card.process(
        apdu(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80, witness) + tlv(0x81, challenge) + tlv(0x82, b"")))
    )
    return resp


def test_aes_management_key_mutual_authentication(piv: PIVCard) -> None:
    three_des = Cipher(TripleDES(DEFAULT_MGMT_KEY), modes.ECB())
    # single (card -> host challenge) authentication with the default 3DES key
    ch = tlv_dict(tlv_dict(ok(piv.process(apdu(0x87, ALG_3DES, 0x9B, tlv(0x7C, tlv(0x81, b""))))))[0x7C])[
        0x81
    ]
    e = three_des.encryptor()
    ok(piv.process(apdu(0x87, ALG_3DES, 0x9B, tlv(0x7C, tlv(0x82, e.update(ch) + e.finalize())))))
    assert piv.mgmt_authenticated
    aes_key = bytes(range(16))
    ok(piv.process(apdu(0xFF, 0xFF, 0xFF, bytes([ALG_AES128, 0x9B, 16]) + aes_key)))
    piv.reset()
    resp = ok(mutual_auth(piv, ALG_AES128, aes_key))
    enc = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
    assert tlv_dict(tlv_dict(resp)[0x7C])[0x82] == enc.update(bytes(range(16))) + enc.finalize()
    piv.reset()
    assert mutual_auth(piv, ALG_AES128, bytes(16))[-2:] == b"\x69\x82"  # wrong key
    assert not piv.mgmt_authenticated


def test_p384_keygen_and_sign_and_rsa3072_via_chaining(piv: PIVCard) -> None:
    piv.mgmt_authenticated = True
    pub = tlv_dict(
        tlv_dict(ok(piv.process(apdu(0x47, 0, 0x9E, tlv(0xAC, tlv(0x80, bytes([ALG_ECCP384])))))))[0x7F49]
    )
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), pub[0x86])
    digest = hashlib.sha384(b"x").digest()
    resp = ok(piv.process(apdu(0x87, ALG_ECCP384, 0x9E, tlv(0x7C, tlv(0x82, b"") + tlv(0x81, digest)))))
    sig = tlv_dict(tlv_dict(resp)[0x7C])[0x82]
    key.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
    # RSA-3072 on 9D: 384-byte input sent in chained short APDUs, answer via GET RESPONSE
    resp = piv.process(apdu(0x47, 0, 0x9D, tlv(0xAC, tlv(0x80, bytes([ALG_RSA3072])))))
    assert resp[-2] == 0x61  # public key longer than 256 bytes
    body = resp[:-2] + ok(piv.process(bytes.fromhex("00c0000000")))
    n = int.from_bytes(tlv_dict(tlv_dict(body)[0x7F49])[0x81], "big")
    assert n.bit_length() == 3072
    ok(piv.process(apdu(0x20, 0, 0x80, b"123456\xff\xff")))
    m = (12345).to_bytes(384, "big")
    data = tlv(0x7C, tlv(0x82, b"") + tlv(0x81, m))
    for i in range(0, len(data) - 255, 255):
        ok(piv.process(apdu(0x87, ALG_RSA3072, 0x9D, data[i : i + 255], cla=0x10)))
    last = data[(len(data) - 1) // 255 * 255 :]
    resp = piv.process(apdu(0x87, ALG_RSA3072, 0x9D, last))
    assert resp[-2] == 0x61
    full = resp[:-2] + ok(piv.process(bytes.fromhex("00c0000000")))
    s = int.from_bytes(tlv_dict(tlv_dict(full)[0x7C])[0x82], "big")
    assert pow(s, 65537, n) == 12345


def test_pin_policy_and_security_status(piv: PIVCard) -> None:
    sign = apdu(0x87, 0x11, 0x9A, tlv(0x7C, tlv(0x82, b"") + tlv(0x81, bytes(32))))
    assert piv.process(sign) == b"\x69\x82"  # PIN not verified
    assert piv.process(apdu(0x20, 0, 0x80)) == b"\x63\xc3"  # status: 3 tries
    ok(piv.process(apdu(0x20, 0, 0x80, b"123456\xff\xff")))
    ok(piv.process(sign))
    piv.reset()  # power cycle loses the security status
    assert piv.process(sign) == b"\x69\x82"
    # a new PIN outside the profile's 6..8 digits is refused
    assert piv.process(apdu(0x24, 0, 0x80, b"123456\xff\xff" + b"1234\xff\xff\xff\xff")) == b"\x6a\x80"
    assert piv.process(bytes.fromhex("00cb3fff055c035fc1ff00")) == b"\x6a\x82"  # absent object
    assert piv.process(bytes.fromhex("00ee000000")) == b"\x6d\x00"
