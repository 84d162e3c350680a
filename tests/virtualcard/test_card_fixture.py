"""The `card` fixture describes a usable token, whatever --card says."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed  # noqa: F401
from vc_helpers import find, open_session, sign, verify_ecdsa_raw, verify_rsa_pkcs1

from shim.constants import CKA, CKM, CKO
from virtualcard.cardinfo import CardInfo

DATA = b"www.example.com. 300 IN A 192.0.2.1"
CURVES = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}


def test_card_keys_sign_and_verify_against_token_public_keys(card: CardInfo) -> None:
    assert set(card.keys) == {"ec", "rsa"}
    s = open_session(card)
    try:
        ec_info, rsa_info = card.keys["ec"], card.keys["rsa"]
        assert ec_info.key_type == "EC" and rsa_info.key_type == "RSA"
        h = find(s, CKO.PUBLIC_KEY, ec_info.id)
        point = bytes(s.getAttributeValue(h, [CKA.EC_POINT])[0])
        if point[0] == 0x04 and len(point) > 2 and point[1] == len(point) - 2:  # DER OCTET STRING
            point = point[2:]
        elif point[0] == 0x04 and point[1] == 0x81:
            point = point[3:]
        ec_pub = ec.EllipticCurvePublicKey.from_encoded_point(CURVES[ec_info.curve or "secp256r1"], point)
        # CKM_ECDSA (hash on the host) is what every card offers
        digest = hashlib.sha256(DATA).digest()
        verify_ecdsa_raw(ec_pub, sign(s, ec_info.id, CKM.ECDSA, digest), digest, prehashed=True)
        h = find(s, CKO.PUBLIC_KEY, rsa_info.id)
        n, e = (
            int.from_bytes(bytes(v), "big")
            for v in s.getAttributeValue(h, [CKA.MODULUS, CKA.PUBLIC_EXPONENT])
        )
        rsa_pub = rsa.RSAPublicNumbers(e, n).public_key()
        assert rsa_pub.key_size == rsa_info.bits
        prefix = bytes.fromhex("3031300d060960864801650304020105000420")  # DigestInfo SHA-256
        sig = sign(s, rsa_info.id, CKM.RSA_PKCS, prefix + hashlib.sha256(DATA).digest())
        verify_rsa_pkcs1(rsa_pub, sig, DATA)
    finally:
        s.logout()
        s.closeSession()


def test_card_env_and_flags_fit_the_kind(card: CardInfo) -> None:
    if card.kind.startswith("softhsm"):
        assert "SOFTHSM2_CONF" in card.env and card.module.endswith("libsofthsm2.so")
        assert card.can_generate
        assert card.writable == (card.kind == "softhsm")
        assert bool(card.shim_conf) == (card.kind == "softhsm-cardlike")
    else:
        assert card.module.endswith("opensc-pkcs11.so") and not card.writable and not card.can_generate
    if card.kind == "virtual":
        assert "PCSCLITE_CSOCK_NAME" in card.env
