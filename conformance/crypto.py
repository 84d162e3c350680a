"""Signature checks with pyca/cryptography, from the public values the card exposes."""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from shim.constants import CKM

_CURVES = {"06082a8648ce3d030107": ec.SECP256R1(), "06052b81040022": ec.SECP384R1(), "06052b81040023": ec.SECP521R1()}
_BY_LEN: dict[int, hashes.HashAlgorithm] = {20: hashes.SHA1(), 28: hashes.SHA224(), 32: hashes.SHA256(),
                                            48: hashes.SHA384(), 64: hashes.SHA512()}
_HASH_OF = {CKM.SHA1_RSA_PKCS: hashes.SHA1(), CKM.SHA256_RSA_PKCS: hashes.SHA256(),
            CKM.SHA384_RSA_PKCS: hashes.SHA384(), CKM.SHA512_RSA_PKCS: hashes.SHA512(),
            CKM.ECDSA_SHA1: hashes.SHA1(), CKM.ECDSA_SHA256: hashes.SHA256(), CKM.ECDSA_SHA384: hashes.SHA384(),
            CKM.ECDSA_SHA512: hashes.SHA512()}
DIGESTINFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


def ec_public(params_hex: str, point_hex: str) -> ec.EllipticCurvePublicKey:
    point = bytes.fromhex(point_hex)
    if point[0] == 0x04 and len(point) > 2 and point[1] == len(point) - 2 and point[2] == 0x04:
        point = point[2:]  # DER OCTET STRING around the uncompressed point (what PKCS#11 mandates)
    elif point[0] == 0x04 and point[1] == 0x81:
        point = point[3:]
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[params_hex.lower()], point)


def rsa_public(modulus_hex: str, exponent_hex: str) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(int(exponent_hex, 16), int(modulus_hex, 16)).public_key()


def verify(mechanism: int, key: Any, data: bytes, sig: bytes) -> str | None:
    """``None`` when ``sig`` is a valid signature of ``data``; else why not (or ``"unchecked: ..."``)."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            n = (key.curve.key_size + 7) // 8
            if len(sig) != 2 * n:
                return f"ECDSA signature is {len(sig)} bytes, want {2 * n} (r||s)"
            der = encode_dss_signature(int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big"))
            if mechanism == CKM.ECDSA:
                if len(data) not in _BY_LEN:
                    return f"unchecked: raw ECDSA over {len(data)} bytes"
                key.verify(der, data, ec.ECDSA(Prehashed(_BY_LEN[len(data)])))
            else:
                key.verify(der, data, ec.ECDSA(_HASH_OF[CKM(mechanism)]))
        elif isinstance(key, rsa.RSAPublicKey):
            if mechanism == CKM.RSA_PKCS:
                if key.recover_data_from_signature(sig, padding.PKCS1v15(), None) != data:
                    return "RSA PKCS#1 v1.5 signature recovers other data"
            else:
                key.verify(sig, data, padding.PKCS1v15(), _HASH_OF[CKM(mechanism)])
        else:
            return f"unchecked: no public key for {CKM(mechanism).name}"
    except InvalidSignature:
        return f"{CKM(mechanism).name} signature does not verify"
    except KeyError:
        return f"unchecked: {mechanism:#x}"
    return None
