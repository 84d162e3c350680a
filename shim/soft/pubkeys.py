"""Public key objects for card private keys that have none.

libp11, BIND 9.16 and BIND 9.20 (pkcs11-provider) find a key pair by its
public key object; some cards keep only the private key (and maybe a
certificate).  For such a key the shim presents a CKO_PUBLIC_KEY with the same
CKA_ID and CKA_LABEL, CKA_TOKEN=TRUE (it mirrors a token key), built from the
private key's own public attributes (CKA_EC_POINT / CKA_MODULUS +
CKA_PUBLIC_EXPONENT) or, failing that, from the certificate with the same
CKA_ID.  The scan costs card round trips, so it runs once per slot after a
login made private keys visible; its result is cached.

A card public key with the right CKA_ID but another label (OpenSC's PIV driver:
"PIV AUTH pubkey" for "PIV AUTH key") does not satisfy BIND 9.16 or libp11,
which look the public key up by the private key's label.  The derived key then
replaces it: the card's own is hidden from searches (still readable by
handle), so a lookup by id= (BIND 9.20's pkcs11 URI, Knot, OpenDNSSEC) keeps
finding exactly one public key.
"""

from __future__ import annotations

from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shim.attributes import FALSE, TRUE, encode_ulong, ulong
from shim.constants import CKA, CKK, CKO
from shim.soft.card import Fn, find, read_attributes
from shim.soft.verify import EC_CURVES, wrap_octet_string

_PRIV_ATTRS = (CKA.ID, CKA.LABEL, CKA.KEY_TYPE, CKA.EC_PARAMS, CKA.EC_POINT, CKA.MODULUS, CKA.PUBLIC_EXPONENT,
               CKA.PRIVATE)
_CURVE_DER = {type(c).__name__: der for der, c in EC_CURVES.items()}


class Missing(NamedTuple):
    seen: int  # private keys visible (0: not logged in yet)
    derived: list[tuple[int, dict[int, bytes]]]  # (card private handle, public key attributes)
    shadowed: set[int]  # card public keys with the same CKA_ID but another label: to hide


def missing_public_keys(fn: Fn, session: int) -> Missing:
    privs = find(fn, session, {CKA.CLASS: encode_ulong(CKO.PRIVATE_KEY)})
    if not privs:
        return Missing(0, [], set())
    # BIND 9.16 and libp11 look the public key up by the private key's LABEL
    # (and ID); OpenSC's PIV driver labels them differently ("PIV AUTH key" vs
    # "PIV AUTH pubkey"), so a public key only counts if both match.
    pub_ids = set()
    pubs_by_id: dict[bytes | None, list[int]] = {}
    for h in find(fn, session, {CKA.CLASS: encode_ulong(CKO.PUBLIC_KEY)}):
        pa = read_attributes(fn, session, h, (CKA.ID, CKA.LABEL))
        pub_ids.add((pa.get(CKA.ID), pa.get(CKA.LABEL, b"")))
        pubs_by_id.setdefault(pa.get(CKA.ID), []).append(h)
    shadowed: set[int] = set()
    out = []
    certs: dict[bytes, bytes] | None = None
    for h in privs:
        a = read_attributes(fn, session, h, _PRIV_ATTRS)
        kid = a.get(CKA.ID, b"")
        if (kid, a.get(CKA.LABEL, b"")) in pub_ids:
            continue
        pub = _from_private(a)
        if pub is None:
            if certs is None:
                certs = {}
                for c in find(fn, session, {CKA.CLASS: encode_ulong(CKO.CERTIFICATE)}):
                    ca = read_attributes(fn, session, c, (CKA.ID, CKA.VALUE))
                    if CKA.VALUE in ca:
                        certs.setdefault(ca.get(CKA.ID, b""), ca[CKA.VALUE])
            if kid in certs:
                pub = _from_certificate(certs[kid])
        if pub is None:
            continue
        attrs: dict[int, bytes] = {
                 CKA.CLASS: encode_ulong(CKO.PUBLIC_KEY), CKA.TOKEN: TRUE, CKA.PRIVATE: FALSE, CKA.MODIFIABLE: FALSE,
                 CKA.COPYABLE: TRUE, CKA.DESTROYABLE: FALSE, CKA.ID: kid, CKA.LABEL: a.get(CKA.LABEL, b""),
                 CKA.VERIFY: TRUE, CKA.ENCRYPT: FALSE, CKA.WRAP: FALSE, CKA.VERIFY_RECOVER: FALSE,
                 CKA.DERIVE: FALSE, CKA.LOCAL: FALSE, CKA.TRUSTED: FALSE, CKA.SUBJECT: b"",
                 CKA.START_DATE: b"", CKA.END_DATE: b""}
        attrs.update(pub)
        out.append((h, attrs))
        shadowed.update(pubs_by_id.get(kid, ()))
    return Missing(len(privs), out, shadowed)


def _from_private(a: dict[int, bytes]) -> dict[int, bytes] | None:
    kt = ulong(a.get(CKA.KEY_TYPE))
    if kt == CKK.RSA and a.get(CKA.MODULUS) and a.get(CKA.PUBLIC_EXPONENT):
        n = a[CKA.MODULUS]
        return {CKA.KEY_TYPE: encode_ulong(CKK.RSA), CKA.MODULUS: n, CKA.PUBLIC_EXPONENT: a[CKA.PUBLIC_EXPONENT],
                CKA.MODULUS_BITS: encode_ulong(int.from_bytes(n, "big").bit_length())}
    if kt is not None and kt in (CKK.EC, CKK.EC_EDWARDS) and a.get(CKA.EC_PARAMS) and a.get(CKA.EC_POINT):
        return {CKA.KEY_TYPE: encode_ulong(kt), CKA.EC_PARAMS: a[CKA.EC_PARAMS], CKA.EC_POINT: a[CKA.EC_POINT]}
    return None


def _from_certificate(der: bytes) -> dict[int, bytes] | None:
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return {CKA.KEY_TYPE: encode_ulong(CKK.RSA),
                CKA.MODULUS: nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big"),
                CKA.PUBLIC_EXPONENT: nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"),
                CKA.MODULUS_BITS: encode_ulong(key.key_size)}
    if isinstance(key, ec.EllipticCurvePublicKey):
        params = _CURVE_DER.get(type(key.curve).__name__)
        if params is None:
            return None
        point = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {CKA.KEY_TYPE: encode_ulong(CKK.EC), CKA.EC_PARAMS: params, CKA.EC_POINT: wrap_octet_string(point)}
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        params = bytes.fromhex("06032b6570" if isinstance(key, ed25519.Ed25519PublicKey) else "06032b6571")
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {CKA.KEY_TYPE: encode_ulong(CKK.EC_EDWARDS), CKA.EC_PARAMS: params, CKA.EC_POINT: wrap_octet_string(raw)}
    return None
