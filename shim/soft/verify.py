"""Signature verification in software over public key attributes.

Keys are given as PKCS#11 attributes (from a shim session object, a derived
public key, or read from the card), so card and shim keys verify the same way.
Errors follow PKCS#11: a signature of the wrong length is
CKR_SIGNATURE_LEN_RANGE, a wrong one CKR_SIGNATURE_INVALID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils

from shim.attributes import ulong
from shim.constants import CKA, CKK, CKM, CKR
from shim.errors import PKCS11Error
from shim.soft.hashsign import HASHED, HashThenSign, parse_pss

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

# CKA_EC_PARAMS (DER) -> curve
EC_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),
    bytes.fromhex("06052b81040023"): ec.SECP521R1(),
}
ED_CURVES: dict[bytes, str] = {
    bytes.fromhex("06032b6570"): "ed25519",
    bytes.fromhex("06032b6571"): "ed448",
    b"\x13\x0cedwards25519": "ed25519",
    b"\x13\x0aedwards448": "ed448",
}
_HASH_CLS: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5, "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
    "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}
_BY_DIGEST_SIZE = {16: "md5", 20: "sha1", 28: "sha224", 32: "sha256", 48: "sha384", 64: "sha512"}

VERIFY_MECHANISMS = frozenset({CKM.ECDSA, CKM.RSA_PKCS, CKM.RSA_PKCS_PSS, CKM.EDDSA, *HASHED})


def der_octet_string(value: bytes) -> bytes | None:
    """The content of a DER OCTET STRING that is exactly ``value``, else None."""
    if len(value) < 2 or value[0] != 0x04:
        return None
    n = value[1]
    if n < 0x80:
        return value[2:] if len(value) == 2 + n else None
    k = n & 0x7F
    if k == 0 or k > 3 or len(value) < 2 + k:
        return None
    length = int.from_bytes(value[2:2 + k], "big")
    return value[2 + k:] if len(value) == 2 + k + length else None


def wrap_octet_string(value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return b"\x04" + bytes([n]) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(raw)]) + raw + value


def public_key(attrs: Mapping[int, bytes]) -> PublicKey:
    """A ``cryptography`` public key from PKCS#11 attributes."""
    kt = ulong(attrs.get(CKA.KEY_TYPE))
    try:
        if kt == CKK.EC:
            curve = EC_CURVES.get(attrs.get(CKA.EC_PARAMS, b""))
            if curve is None:
                raise PKCS11Error(CKR.CURVE_NOT_SUPPORTED, "unsupported EC_PARAMS")
            point = attrs.get(CKA.EC_POINT, b"")
            inner = der_octet_string(point)
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, inner if inner is not None else point)
        if kt == CKK.RSA:
            n = int.from_bytes(attrs[CKA.MODULUS], "big")
            e = int.from_bytes(attrs[CKA.PUBLIC_EXPONENT], "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kt == CKK.EC_EDWARDS:
            kind = ED_CURVES.get(attrs.get(CKA.EC_PARAMS, b""))
            point = attrs.get(CKA.EC_POINT, b"")
            inner = der_octet_string(point)
            raw = inner if inner is not None else point
            if kind == "ed25519":
                return ed25519.Ed25519PublicKey.from_public_bytes(raw)
            if kind == "ed448":
                return ed448.Ed448PublicKey.from_public_bytes(raw)
            raise PKCS11Error(CKR.CURVE_NOT_SUPPORTED, "unsupported Edwards curve")
    except (KeyError, ValueError) as e:
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, f"unusable public key attributes: {e}") from e
    raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "key type cannot verify")


def _check_key(mechanism: int, key: PublicKey) -> None:
    raw = HASHED[mechanism].raw if mechanism in HASHED else mechanism
    fits: dict[int, bool] = {
        CKM.ECDSA: isinstance(key, ec.EllipticCurvePublicKey),
        CKM.RSA_PKCS: isinstance(key, rsa.RSAPublicKey),
        CKM.RSA_PKCS_PSS: isinstance(key, rsa.RSAPublicKey),
        CKM.EDDSA: isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey),
    }
    ok = fits.get(raw, False)
    if not ok:
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "key type does not match the mechanism")


class Verifier:
    """One verify operation (single or multi-part)."""

    on_card = False

    def __init__(self, mechanism: int, parameter: bytes, key: PublicKey) -> None:
        if mechanism not in VERIFY_MECHANISMS:
            raise PKCS11Error(CKR.MECHANISM_INVALID, "no software verification for this mechanism")
        _check_key(mechanism, key)
        self.mechanism = mechanism
        self.key = key
        self._pss = None
        if mechanism == CKM.RSA_PKCS_PSS:
            self._pss = parse_pss(parameter)
        self._hashed = HashThenSign(mechanism, parameter) if mechanism in HASHED else None
        if self._hashed is not None and self._hashed.spec.raw == CKM.RSA_PKCS_PSS:
            self._pss = parse_pss(parameter)
        self._buf = bytearray()

    def update(self, data: bytes) -> None:
        if self._hashed is not None:
            self._hashed.update(data)
        else:
            self._buf += data

    def verify(self, signature: bytes) -> None:
        """Raise PKCS11Error(CKR_SIGNATURE_INVALID / _LEN_RANGE) unless valid."""
        key = self.key
        if self._hashed is not None:
            raw_mech = self._hashed.spec.raw
            payload = self._hashed.to_sign()
        else:
            raw_mech = self.mechanism
            payload = bytes(self._buf)
        if raw_mech == CKM.ECDSA:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            _verify_ecdsa(key, payload, signature)
        elif raw_mech == CKM.RSA_PKCS:
            assert isinstance(key, rsa.RSAPublicKey)
            _verify_rsa_pkcs1(key, payload, signature)
        elif raw_mech == CKM.RSA_PKCS_PSS:
            assert isinstance(key, rsa.RSAPublicKey) and self._pss is not None
            _check_rsa_len(key, signature)
            if len(payload) != hashlib.new(self._pss.hash).digest_size:
                raise PKCS11Error(CKR.DATA_LEN_RANGE, "PSS input is not a hash of the parameter's size")
            pad = padding.PSS(mgf=padding.MGF1(_HASH_CLS[self._pss.mgf_hash]()), salt_length=self._pss.salt_len)
            try:
                key.verify(signature, payload, pad, utils.Prehashed(_HASH_CLS[self._pss.hash]()))
            except InvalidSignature:
                raise PKCS11Error(CKR.SIGNATURE_INVALID, "RSA-PSS signature does not verify") from None
        elif raw_mech == CKM.EDDSA:
            assert isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
            want = 64 if isinstance(key, ed25519.Ed25519PublicKey) else 114
            if len(signature) != want:
                raise PKCS11Error(CKR.SIGNATURE_LEN_RANGE, f"EdDSA signature must be {want} bytes")
            try:
                key.verify(signature, payload)
            except InvalidSignature:
                raise PKCS11Error(CKR.SIGNATURE_INVALID, "EdDSA signature does not verify") from None


def _verify_ecdsa(key: ec.EllipticCurvePublicKey, digest: bytes, signature: bytes) -> None:
    olen = (key.curve.key_size + 7) // 8
    if len(signature) != 2 * olen:
        raise PKCS11Error(CKR.SIGNATURE_LEN_RANGE, f"ECDSA signature must be {2 * olen} bytes (r||s)")
    r = int.from_bytes(signature[:olen], "big")
    s = int.from_bytes(signature[olen:], "big")
    # Normalise the input to the order's byte length: left zero-padding keeps
    # the integer, cutting keeps the leftmost bits (exact for P-256/P-384).
    name = _BY_DIGEST_SIZE.get(olen)
    if name is not None:
        data = digest.rjust(olen, b"\0") if len(digest) < olen else digest[:olen]
    else:
        name = _BY_DIGEST_SIZE.get(len(digest))
        data = digest
        if name is None:
            raise PKCS11Error(CKR.DATA_LEN_RANGE, "ECDSA input length unsupported for this curve")
    try:
        key.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(utils.Prehashed(_HASH_CLS[name]())))
    except InvalidSignature:
        raise PKCS11Error(CKR.SIGNATURE_INVALID, "ECDSA signature does not verify") from None


def _check_rsa_len(key: rsa.RSAPublicKey, signature: bytes) -> None:
    k = (key.key_size + 7) // 8
    if len(signature) != k:
        raise PKCS11Error(CKR.SIGNATURE_LEN_RANGE, f"RSA signature must be {k} bytes")


def _verify_rsa_pkcs1(key: rsa.RSAPublicKey, data: bytes, signature: bytes) -> None:
    """EMSA-PKCS1-v1_5 over whatever the caller passed (DigestInfo or raw)."""
    _check_rsa_len(key, signature)
    k = (key.key_size + 7) // 8
    if len(data) > k - 11:
        raise PKCS11Error(CKR.DATA_LEN_RANGE, "data too long for the modulus")
    nums = key.public_numbers()
    s = int.from_bytes(signature, "big")
    if s >= nums.n:
        raise PKCS11Error(CKR.SIGNATURE_INVALID, "signature representative out of range")
    em = pow(s, nums.e, nums.n).to_bytes(k, "big")
    expected = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    if em != expected:
        raise PKCS11Error(CKR.SIGNATURE_INVALID, "RSA PKCS#1 v1.5 signature does not verify")

