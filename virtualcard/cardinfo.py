"""What a test (or a shell) needs to know about the card under test."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KeyInfo:
    label: str
    id: bytes
    key_type: str  # "EC" or "RSA"
    curve: str | None = None  # "secp256r1" / "secp384r1" for EC
    bits: int | None = None  # modulus size for RSA


@dataclass
class CardInfo:
    kind: str  # a card kind of sc4testkit.tokens.TOKENS
    module: str  # the backend PKCS#11 module (opensc-pkcs11.so or libsofthsm2.so)
    pin: str
    token_label: str
    keys: dict[str, KeyInfo]  # "ec", "rsa"
    env: dict[str, str] = field(default_factory=dict)  # what a subprocess needs (PCSCLITE_CSOCK_NAME...)
    shim_conf: dict = field(default_factory=dict)  # type: ignore[type-arg]
    writable: bool = False  # token objects can be created
    can_generate: bool = False  # C_GenerateKeyPair through the module
    reader: str = ""  # PC/SC reader name (virtual, opensc)

    def subprocess_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}


def find_module(env_var: str, candidates: tuple[str, ...]) -> str | None:
    """A PKCS#11 module's path: ``env_var`` if set, else the first candidate that exists."""
    env = os.environ.get(env_var)
    if env:
        return env
    return next((p for p in candidates if os.path.exists(p)), None)


_EC_BITS = {256: "secp256r1", 384: "secp384r1", 521: "secp521r1"}


def discover_keys(
    module: str, env: dict[str, str], token_label: str | None = None, pin: str | None = None
) -> tuple[str, dict[str, KeyInfo], str]:
    """List a token with ``pkcs11-tool`` and pick the first EC and the first RSA key pair.

    Returns (token label, {"ec": ..., "rsa": ...}, slot description).  Public key objects are
    listed without login (OpenSC builds them from the certificates).
    """
    full_env = {**os.environ, **env}
    base = ["pkcs11-tool", "--module", module]
    if token_label:
        base += ["--token-label", token_label]
    listing = subprocess.run(base + ["-L"], env=full_env, capture_output=True, text=True, timeout=60)
    label = ""
    reader = ""
    for line in listing.stdout.splitlines():
        m = re.match(r"^Slot \d+ \(0x[0-9a-f]+\): (.*)$", line)
        if m:
            current_reader = m.group(1).strip()
        m = re.match(r"^\s+token label\s+:\s(.*)$", line)
        if m and (token_label is None or m.group(1).strip() == token_label):
            label = m.group(1).strip()
            reader = current_reader
            break
    if not label:
        raise LookupError(f"no token found: {listing.stdout}{listing.stderr}")
    cmd = base + ([] if token_label else ["--token-label", label]) + ["-O", "--type", "pubkey"]
    if pin:
        cmd += ["--login", "--pin", pin]
    out = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60).stdout
    keys: dict[str, KeyInfo] = {}
    for block in re.split(r"(?m)^(?=Public Key Object)", out):
        head = re.match(r"Public Key Object; (EC|RSA)\s+(?:EC_POINT )?(\d+) bits", block)
        lab = re.search(r"(?m)^\s+label:\s+(.*)$", block)
        kid = re.search(r"(?m)^\s+ID:\s+([0-9a-fA-F]+)$", block)
        if not (head and lab and kid):
            continue
        kind = "ec" if head.group(1) == "EC" else "rsa"
        if kind in keys:
            continue
        bits = int(head.group(2))
        label_priv = lab.group(1).strip()
        if label_priv.endswith(" pubkey"):  # OpenSC PIV: "PIV AUTH pubkey" / "PIV AUTH key"
            label_priv = label_priv[: -len(" pubkey")] + " key"
        elif label_priv.startswith("Public key for "):  # ykcs11: "Public key for PIV Authentication"
            label_priv = "Private key for " + label_priv[len("Public key for ") :]
        keys[kind] = KeyInfo(
            label=label_priv,
            id=bytes.fromhex(kid.group(1)),
            key_type=head.group(1),
            curve=_EC_BITS.get(bits) if kind == "ec" else None,
            bits=bits if kind == "rsa" else None,
        )
    return label, keys, reader
