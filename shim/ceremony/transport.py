"""ZSK material for the trip to the online signer: a tar of the files, sealed with AES-256-GCM.

The key comes from a passphrase (scrypt, n=2^17, r=8, p=1) or from an operator's X25519 public key
(an ephemeral X25519 agreement, HKDF-SHA256).  The file is::

    MAGIC | header length (4 bytes, big endian) | header (JSON) | AES-GCM(tar)

and the header (how the key is made, the nonce, the file names) is the GCM associated data, so
neither it nor the ciphertext can change unnoticed.  The DPS keeps ZSKs "in encrypted form"
between sites (5.2.4).
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"SC4ZSK1\n"
SCRYPT = {"n": 1 << 17, "r": 8, "p": 1}
_INFO = b"sc4dnssec zsk transport"


class TransportError(ValueError):
    """The bundle cannot be opened: wrong passphrase or key, or it was changed."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _tar(files: Sequence[Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            info = tarfile.TarInfo(f.name)
            data = f.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def seal(files: Sequence[Path], out: Path, *, passphrase: bytes | None = None,
         recipient: X25519PublicKey | None = None) -> dict[str, Any]:
    """Write the sealed bundle of ``files`` to ``out``; the header (what the record shows)."""
    if (passphrase is None) == (recipient is None):
        raise ValueError("seal with a passphrase or a recipient key, exactly one")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("two files with the same name")
    nonce = secrets.token_bytes(12)
    header: dict[str, Any] = {"alg": "AES-256-GCM", "nonce": _b64(nonce), "files": names}
    if passphrase is not None:
        salt = secrets.token_bytes(16)
        header["kdf"] = {"name": "scrypt", "salt": _b64(salt), **SCRYPT}
        key = Scrypt(salt=salt, length=32, **SCRYPT).derive(passphrase)
    else:
        assert recipient is not None
        eph = X25519PrivateKey.generate()
        eph_pub = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        rcpt = recipient.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        header["kdf"] = {"name": "x25519-hkdf-sha256", "ephemeral": _b64(eph_pub), "recipient": _b64(rcpt)}
        key = HKDF(hashes.SHA256(), 32, salt=eph_pub + rcpt, info=_INFO).derive(eph.exchange(recipient))
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    body = AESGCM(key).encrypt(nonce, _tar(files), MAGIC + head)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(MAGIC + len(head).to_bytes(4, "big") + head + body)
    return header


def unseal(bundle: Path, out_dir: Path, *, passphrase: bytes | None = None,
           private: X25519PrivateKey | None = None) -> list[Path]:
    """Check and decrypt ``bundle`` into ``out_dir`` (files 0600); the files written."""
    raw = bundle.read_bytes()
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4:
        raise TransportError(f"{bundle}: not a sealed ZSK bundle")
    n = int.from_bytes(raw[len(MAGIC):len(MAGIC) + 4], "big")
    head = raw[len(MAGIC) + 4:len(MAGIC) + 4 + n]
    try:
        header = json.loads(head)
        kdf = header["kdf"]
        nonce = base64.b64decode(header["nonce"])
        if kdf["name"] == "scrypt":
            if passphrase is None:
                raise TransportError(f"{bundle}: sealed with a passphrase; give it")
            key = Scrypt(salt=base64.b64decode(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"],
                         p=kdf["p"]).derive(passphrase)
        elif kdf["name"] == "x25519-hkdf-sha256":
            if private is None:
                raise TransportError(f"{bundle}: sealed to an X25519 key; give the private key")
            eph = base64.b64decode(kdf["ephemeral"])
            rcpt = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            shared = private.exchange(X25519PublicKey.from_public_bytes(eph))
            key = HKDF(hashes.SHA256(), 32, salt=eph + rcpt, info=_INFO).derive(shared)
        else:
            raise TransportError(f"{bundle}: unknown key derivation {kdf['name']!r}")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, TransportError):
            raise
        raise TransportError(f"{bundle}: header unreadable") from None
    try:
        plain = AESGCM(key).decrypt(nonce, raw[len(MAGIC) + 4 + n:], MAGIC + head)
    except InvalidTag:
        raise TransportError(f"{bundle}: wrong passphrase or key, or the bundle was changed") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r") as tar:
        for m in tar.getmembers():
            if not m.isfile() or "/" in m.name or m.name in ("", ".", ".."):
                raise TransportError(f"{bundle}: unexpected member {m.name!r}")
            src = tar.extractfile(m)
            assert src is not None
            dest = out_dir / m.name
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(src.read())
            written.append(dest)
    return written
