"""PyKCS11 and pkcs11-tool helpers shared by the virtual card tests."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import PyKCS11
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from shim.constants import CKA, CKM, CKO, CKU
from virtualcard.cardinfo import CardInfo


@functools.cache
def lib(module: str) -> PyKCS11.PyKCS11Lib:
    """One loaded module per process (C_Initialize once)."""
    p11 = PyKCS11.PyKCS11Lib()
    p11.load(module)
    return p11


def open_session(card: CardInfo, login: bool = True) -> PyKCS11.Session:
    p11 = lib(card.module)
    for slot in p11.getSlotList(tokenPresent=True):
        if p11.getTokenInfo(slot).label.strip() == card.token_label:
            s = p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
            if login:
                s.login(card.pin, CKU.USER)
            return s
    raise LookupError(f"token {card.token_label!r} not present")


def find(session: PyKCS11.Session, cls: CKO, key_id: bytes) -> int:
    objs = session.findObjects([(CKA.CLASS, int(cls)), (CKA.ID, key_id)])
    assert objs, f"no {cls.name} with id {key_id.hex()}"
    return objs[0]


def certificate(session: PyKCS11.Session, key_id: bytes) -> x509.Certificate:
    h = find(session, CKO.CERTIFICATE, key_id)
    der = bytes(session.getAttributeValue(h, [CKA.VALUE])[0])
    return x509.load_der_x509_certificate(der)


def sign(session: PyKCS11.Session, key_id: bytes, mech: CKM, data: bytes) -> bytes:
    key = find(session, CKO.PRIVATE_KEY, key_id)
    return bytes(session.sign(key, data, PyKCS11.Mechanism(int(mech), None)))


def verify_ecdsa_raw(
    pub: ec.EllipticCurvePublicKey, raw_sig: bytes, data: bytes, prehashed: bool = False
) -> None:
    """Verify a PKCS#11 (r||s) ECDSA signature; raises InvalidSignature."""
    half = len(raw_sig) // 2
    der = utils.encode_dss_signature(
        int.from_bytes(raw_sig[:half], "big"), int.from_bytes(raw_sig[half:], "big")
    )
    algo = utils.Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256()
    pub.verify(der, data, ec.ECDSA(algo))


def verify_rsa_pkcs1(pub: rsa.RSAPublicKey, sig: bytes, data: bytes) -> None:
    pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())


def p11tool(
    card: CardInfo, *args: str, check: bool = True, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pkcs11-tool", "--module", card.module, "--token-label", card.token_label, *args],
        env=card.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def p11tool_sign(card: CardInfo, key_id: str, mechanism: str, data: Path, out: Path) -> bytes:
    """Sign ``data`` with ``pkcs11-tool --sign`` (after a PIN login) and return the signature."""
    p11tool(card, "--login", "--pin", card.pin, "--sign", "-m", mechanism, "--id", key_id,
            "-i", str(data), "-o", str(out))
    return out.read_bytes()
