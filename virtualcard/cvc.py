"""Card-verifiable certificates (BSI TR-03110) as the SmartCard-HSM and OpenSC's sc-hsm driver use them.

The SmartCard-HSM answers GENERATE ASYMMETRIC KEY PAIR with a certificate signing request in
CVC form, and OpenSC reads every public key back out of that request (file ``CE<key id>``);
the device certificate in ``EF.C_DevAut`` (2F02) is a CVC too, and OpenSC takes the token
serial from its holder reference.  Layout::

    7F21 certificate
        7F4E body:  5F29 profile id, 42 CA reference, 7F49 public key, 5F20 holder reference
        5F37 signature (ECDSA: plain r||s; RSA: PKCS#1 v1.5)

A key's request is wrapped once more, as an authenticated request:
``67 { 7F21 ..., 42 outer CA reference, 5F37 signature by the device key }``.

Public key template 7F49: 06 algorithm OID, then for RSA 81 modulus, 82 exponent; for EC
81 prime, 82 a, 83 b, 84 G, 85 order, 86 public point, 87 cofactor.  The curve of an EC key is
told by its prime, as OpenSC does.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .apdu import tlv, tlv_dict

# TA algorithm identifiers (TR-03110 part 3, A.6.4), DER content bytes.
OID_RSA_V15_SHA256 = bytes.fromhex("04007F00070202020102")
OID_ECDSA_SHA256 = bytes.fromhex("04007F00070202020203")


@dataclass(frozen=True)
class Curve:
    name: str
    p: bytes
    a: bytes
    b: bytes
    g: bytes
    n: bytes
    h: bytes

    @property
    def ec_curve(self) -> ec.EllipticCurve:
        return {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}[self.name]


# Domain parameters from SEC 2 (what `openssl ecparam -param_enc explicit` prints).
CURVES: dict[str, Curve] = {
    c.name: c
    for c in (
        Curve(
            "secp256r1",
            p=bytes.fromhex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"),
            a=bytes.fromhex("ffffffff00000001000000000000000000000000fffffffffffffffffffffffc"),
            b=bytes.fromhex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b"),
            g=bytes.fromhex(
                "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
                "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
            ),
            n=bytes.fromhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"),
            h=b"\x01",
        ),
        Curve(
            "secp384r1",
            p=bytes.fromhex(
                "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff"
            ),
            a=bytes.fromhex(
                "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000fffffffc"
            ),
            b=bytes.fromhex(
                "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef"
            ),
            g=bytes.fromhex(
                "04aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7"
                "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f"
            ),
            n=bytes.fromhex(
                "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973"
            ),
            h=b"\x01",
        ),
    )
}


def curve_by_prime(prime: bytes) -> Curve | None:
    p = prime.lstrip(b"\x00")
    return next((c for c in CURVES.values() if c.p == p), None)


def curve_of(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> Curve:
    return CURVES[key.curve.name]


def public_key_template(pub: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    """The 7F49 public key data object for ``pub``."""
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        body = (
            tlv(0x06, OID_RSA_V15_SHA256)
            + tlv(0x81, nums.n.to_bytes((pub.key_size + 7) // 8, "big"))
            + tlv(0x82, nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"))
        )
    else:
        c = curve_of(pub)
        point = pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        body = (
            tlv(0x06, OID_ECDSA_SHA256)
            + tlv(0x81, c.p)
            + tlv(0x82, c.a)
            + tlv(0x83, c.b)
            + tlv(0x84, c.g)
            + tlv(0x85, c.n)
            + tlv(0x86, point)
            + tlv(0x87, c.h)
        )
    return tlv(0x7F49, body)


def sign_cvc_body(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, body: bytes) -> bytes:
    """TR-03110 signature over the encoded body: plain r||s for ECDSA, PKCS#1 v1.5 for RSA."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(body, padding.PKCS1v15(), hashes.SHA256())
    der = key.sign(body, ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def make_cvc(
    subject_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    signer: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    car: str,
    chr_: str,
) -> bytes:
    """A CV certificate (or, signed by the subject's own key, a plain request)."""
    body = tlv(
        0x7F4E,
        tlv(0x5F29, b"\x00") + tlv(0x42, car.encode()) + public_key_template(subject_key) + tlv(0x5F20, chr_.encode()),
    )
    return tlv(0x7F21, body + tlv(0x5F37, sign_cvc_body(signer, body)))


def authenticated_request(
    request: bytes, device_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, outer_car: str
) -> bytes:
    """Wrap a self-signed request as the card does (tag 67): signed again by the device key.

    OpenSC builds a token's public key objects only from a request in this form.
    """
    inner = request + tlv(0x42, outer_car.encode())
    return tlv(0x67, inner + tlv(0x5F37, sign_cvc_body(device_key, inner)))


def parse_cvc(data: bytes) -> dict[int, bytes]:
    """Body fields of a CVC or request (7F21 or 67 wrapper); 0x7F49 maps to its own dict bytes."""
    outer = tlv_dict(data)
    if 0x67 in outer:
        outer = tlv_dict(outer[0x67])
    cert = tlv_dict(outer[0x7F21])
    return tlv_dict(cert[0x7F4E])


def public_key_from_cvc(data: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public key a CVC (request) carries; for tests and the DKEK tools."""
    pk = tlv_dict(parse_cvc(data)[0x7F49])
    if pk[0x06] == OID_RSA_V15_SHA256:
        return rsa.RSAPublicNumbers(int.from_bytes(pk[0x82], "big"), int.from_bytes(pk[0x81], "big")).public_key()
    curve = curve_by_prime(pk[0x81])
    if curve is None:
        raise ValueError("unknown curve")
    return ec.EllipticCurvePublicKey.from_encoded_point(curve.ec_curve, pk[0x86])
