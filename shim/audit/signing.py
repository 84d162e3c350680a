"""Ed25519 operator keys and the signed checkpoint statement.

Shared by ``checkpoint`` (signs) and ``verify`` (checks), so the signed bytes
are defined once.  The key signs only the chain head: because every line's
``prev`` commits to the line before it, a valid signature over (seq, hash)
of the head commits to the whole log up to that record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG: Final = "ed25519"
_DOMAIN: Final = b"sc4dnssec-audit-checkpoint/1\n"  # never valid as any other signed message
SIGNED_FIELDS: Final = ("head_seq", "head_sha256", "signed_at", "key_id")


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 of the raw public key: names the key in records."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def statement(args: dict[str, Any]) -> bytes:
    """The exact bytes signed for a checkpoint with these args."""
    return _DOMAIN + json.dumps({k: args[k] for k in SIGNED_FIELDS}, sort_keys=True,
                                separators=(",", ":")).encode("ascii")


def sign(private: Ed25519PrivateKey, args: dict[str, Any]) -> str:
    return base64.b64encode(private.sign(statement(args))).decode("ascii")


def signature_error(public: Ed25519PublicKey, args: dict[str, Any]) -> str | None:
    """Why ``args`` (a checkpoint) is not validly signed by ``public``, or None."""
    if any(k not in args for k in (*SIGNED_FIELDS, "sig")) or args.get("alg") != ALG:
        return "checkpoint lacks signed fields"
    if args["key_id"] != key_id(public):
        return f"checkpoint signed by key {args['key_id']}, not by the given key {key_id(public)}"
    try:
        public.verify(base64.b64decode(args["sig"], validate=True), statement(args))
    except (InvalidSignature, ValueError):
        return "checkpoint signature is invalid"
    return None


def load_private(path: str) -> Ed25519PrivateKey:
    with open(path, "rb") as f:
        data = f.read()
    password = os.environ.get("SC4DNSSEC_CHECKPOINT_PASSPHRASE")
    key = serialization.load_pem_private_key(data, password.encode() if password else None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public(path: str) -> Ed25519PublicKey:
    with open(path, "rb") as f:
        data = f.read()
    try:
        key: object = serialization.load_pem_public_key(data)
    except ValueError:
        # Accept the private key file too, for convenience on the operator's machine.
        key = serialization.load_pem_private_key(data, None).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def keygen(directory: str) -> tuple[str, str]:
    """Write ``checkpoint-ed25519.pem`` (0600) and ``checkpoint-ed25519.pub.pem``; never overwrites."""
    os.makedirs(directory, exist_ok=True)
    priv_path = os.path.join(directory, "checkpoint-ed25519.pem")
    pub_path = os.path.join(directory, "checkpoint-ed25519.pub.pem")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, data, mode in ((priv_path, priv, 0o600), (pub_path, pub, 0o644)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # O_EXCL: never overwrite a key
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return priv_path, pub_path


def checkpoints_path(log_path: str) -> str:
    """Default detached checkpoint file of a log."""
    return log_path + ".checkpoints"


def read_checkpoints(path: str) -> list[dict[str, Any]]:
    """Entries of a detached checkpoint file; a malformed line raises ValueError."""
    entries = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not JSON") from e
            if not isinstance(obj, dict) or not all(isinstance(obj.get(k), int) for k in ("seq", "head_seq")):
                raise ValueError(f"{path}:{n}: not a checkpoint entry")
            entries.append(obj)
    return entries
