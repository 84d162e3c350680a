"""The cards of a ceremony, through OpenSC's tools: sc-hsm-tool and opensc-explorer straight to the
card (initialise, DKEK shares, wrap, unwrap: no PKCS#11 function does these), pkcs11-tool through
the shim (slots, serials, key generation, public keys, signatures: every call audited).

Secrets (PINs) reach the tools as ``env:NAME`` (OpenSC's ``util_get_pin``), never on a command
line, which any local user can read in /proc.  A DKEK share goes to the card in the IMPORT DKEK
SHARE APDU that ``sc-hsm-tool --import-dkek-share`` would send, written to opensc-explorer's
standard input; its output, which echoes the APDU, is never shown.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TIMEOUT_S = 300.0
#: sc-hsm-tool's DKEK share file: "Salted__" | salt(8) | AES-256-CBC(share(32) + PKCS#7 padding),
#: key and IV from OpenSSL's EVP_BytesToKey(MD5) over the password with this many rounds.
SHARE_KDF_ROUNDS = 10_000_000
SHARE_MAGIC = b"Salted__"


class CardError(RuntimeError):
    """A card operation failed or a card is not what the ceremony expects; the message says which."""


@dataclass(frozen=True)
class DkekStatus:
    shares: int
    outstanding: int
    kcv: str

    @property
    def complete(self) -> bool:
        return self.shares > 0 and self.outstanding == 0


@dataclass(frozen=True)
class Slot:
    slot_id: str  # as pkcs11-tool prints it, "0x4"
    reader: str
    serial: str | None
    label: str | None


@dataclass
class Tools:
    """How the ceremony runs OpenSC's tools: the environment (pcscd socket, shim configuration),
    the shim module for pkcs11-tool, and the secrets it hands over as environment variables."""

    env: Mapping[str, str]
    module: str
    secrets: dict[str, str]

    def _run(self, argv: list[str], *, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **self.secrets}
        try:
            r = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S)
        except FileNotFoundError as e:
            raise CardError(f"{argv[0]} not installed (apt-get install opensc)") from e
        except subprocess.TimeoutExpired as e:
            raise CardError(f"{argv[0]} did not finish in {TIMEOUT_S:g} s") from e
        if check and r.returncode != 0:
            raise CardError(f"{' '.join(argv[:3])} failed ({r.returncode}): {_tail(r.stdout + r.stderr)}")
        return r

    # -- straight to the card ---------------------------------------------------------------
    def hsm_status(self, reader: str) -> DkekStatus:
        out = self._run(["sc-hsm-tool", "--reader", reader]).stdout
        return parse_status(out)

    def initialize(self, reader: str, *, so_pin_var: str, pin_var: str, dkek_shares: int, label: str) -> None:
        self._run(["sc-hsm-tool", "--reader", reader, "--initialize", "--so-pin", f"env:{so_pin_var}",
                   "--pin", f"env:{pin_var}", "--dkek-shares", str(dkek_shares), "--label", label])

    def import_share(self, reader: str, share: bytes) -> DkekStatus:
        if len(share) != 32:
            raise CardError("a DKEK share is 32 bytes")
        script = f"apdu 80 52 00 00 20 {share.hex()}\nquit\n"
        r = self._run(["opensc-explorer", "--reader", reader], stdin=script, check=False)
        if "SW1=0x90, SW2=0x00" not in r.stdout:
            sw = re.search(r"SW1=0x([0-9A-Fa-f]{2}), SW2=0x([0-9A-Fa-f]{2})", r.stdout)
            raise CardError(f"IMPORT DKEK SHARE into {reader} refused"
                            + (f" (SW {sw.group(1)}{sw.group(2)})" if sw else f" (opensc-explorer {r.returncode})"))
        return self.hsm_status(reader)

    def wrap_key(self, reader: str, key_ref: int, out: Path, *, pin_var: str) -> None:
        self._run(["sc-hsm-tool", "--reader", reader, "--wrap-key", str(out), "--key-reference", str(key_ref),
                   "--pin", f"env:{pin_var}"])

    def unwrap_key(self, reader: str, key_ref: int, blob: Path, *, pin_var: str) -> None:
        r = self._run(["sc-hsm-tool", "--reader", reader, "--unwrap-key", str(blob), "--key-reference", str(key_ref),
                       "--pin", f"env:{pin_var}"], check=False)
        if r.returncode != 0 or "Key successfully imported" not in r.stdout:
            raise CardError(f"unwrap into {reader} failed: {_tail(r.stdout + r.stderr)}")

    def key_ref(self, reader: str, label: str) -> int | None:
        """The card's key reference of the private key labelled ``label`` (pkcs15-tool)."""
        out = self._run(["pkcs15-tool", "--reader", reader, "--list-keys"], check=False).stdout
        for block in out.split("\n\n"):
            if f"[{label}]" in block and (m := re.search(r"Key ref\s*:\s*(\d+)", block)):
                return int(m.group(1))
        return None

    # -- through the shim -------------------------------------------------------------------
    def p11(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(["pkcs11-tool", "--module", self.module, *args], check=check)

    def slots(self) -> list[Slot]:
        return parse_slots(self.p11("--list-slots").stdout)

    def slot_of(self, reader: str) -> Slot:
        for s in self.slots():
            if s.reader == reader:
                return s
        raise CardError(f"no token in reader {reader!r} (through the shim)")

    def public_key(self, reader: str, label: str) -> bytes | None:
        """The DER SubjectPublicKeyInfo of the public key labelled ``label``, or None."""
        slot = self.slot_of(reader)
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "pub.der"
            r = self.p11("--slot", slot.slot_id, "--read-object", "--type", "pubkey", "--label", label,
                         "-o", str(out), check=False)
            return out.read_bytes() if r.returncode == 0 and out.exists() else None

    def generate_ec_key(self, reader: str, label: str, key_id: str, *, curve: str, pin_var: str) -> None:
        slot = self.slot_of(reader)
        self.p11("--slot", slot.slot_id, "--login", "--pin", f"env:{pin_var}", "--keypairgen",
                 "--key-type", f"EC:{curve}", "--label", label, "--id", key_id)

    def sign(self, reader: str, label: str, data: bytes, *, pin_var: str) -> bytes:
        """A raw ECDSA signature (r | s) over ``data`` (a SHA-256 digest) by the key ``label``."""
        slot = self.slot_of(reader)
        with tempfile.TemporaryDirectory() as d:
            src, sig = Path(d) / "in", Path(d) / "sig"
            src.write_bytes(data)
            self.p11("--slot", slot.slot_id, "--login", "--pin", f"env:{pin_var}", "--sign", "-m", "ECDSA",
                     "--label", label, "-i", str(src), "-o", str(sig))
            return sig.read_bytes()


def parse_status(out: str) -> DkekStatus:
    """sc-hsm-tool's status lines: ``DKEK shares : N``, ``DKEK key check value : HEX`` and, while
    shares are missing, ``DKEK import pending, N share(s) still missing``."""
    shares = re.search(r"DKEK shares\s*:\s*(\d+)", out)
    kcv = re.search(r"DKEK key check value\s*:\s*([0-9A-Fa-f]+)", out)
    missing = re.search(r"(\d+) share\(s\) still missing", out)
    return DkekStatus(int(shares.group(1)) if shares else 0, int(missing.group(1)) if missing else 0,
                      kcv.group(1).upper() if kcv else "")


_SLOT = re.compile(r"^Slot \d+ \((0x[0-9a-fA-F]+)\): (.*?)\s*$")
_FIELD = re.compile(r"^\s+(token label|serial num)\s*:\s*(.*?)\s*$")


def parse_slots(out: str) -> list[Slot]:
    slots: list[Slot] = []
    cur: dict[str, str] = {}

    def flush() -> None:
        if cur:
            slots.append(Slot(cur["id"], cur["reader"], cur.get("serial num"), cur.get("token label")))

    for line in out.splitlines():
        if m := _SLOT.match(line):
            flush()
            cur = {"id": m.group(1), "reader": m.group(2)}
        elif cur and (m := _FIELD.match(line)):
            cur[m.group(1)] = m.group(2)
    flush()
    return slots


def _tail(text: str, n: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


# -- DKEK share files (sc-hsm-tool's format) -------------------------------------------------
def _libcrypto() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
    lib = ctypes.CDLL(name)
    lib.EVP_md5.restype = ctypes.c_void_p
    lib.EVP_aes_256_cbc.restype = ctypes.c_void_p
    lib.EVP_BytesToKey.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
    return lib


def _share_key(password: bytes, salt: bytes, rounds: int) -> tuple[bytes, bytes]:
    """EVP_BytesToKey(AES-256-CBC, MD5, salt, password, rounds), in OpenSSL itself: the same
    derivation sc-hsm-tool makes, at C speed (10 million MD5 rounds)."""
    lib = _libcrypto()
    key, iv = ctypes.create_string_buffer(32), ctypes.create_string_buffer(16)
    n = lib.EVP_BytesToKey(lib.EVP_aes_256_cbc(), lib.EVP_md5(), salt, password, len(password), rounds, key, iv)
    if n != 32:
        raise CardError("EVP_BytesToKey failed")
    return key.raw, iv.raw


def write_share_file(path: Path, share: bytes, password: bytes, rounds: int = SHARE_KDF_ROUNDS) -> None:
    """Encrypt ``share`` as ``sc-hsm-tool --create-dkek-share`` does (its --import-dkek-share reads it)."""
    salt = secrets.token_bytes(8)
    key, iv = _share_key(password, salt, rounds)
    pad = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = enc.update(pad.update(share) + pad.finalize()) + enc.finalize()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(SHARE_MAGIC + salt + body)


def read_share_file(path: Path, password: bytes, rounds: int = SHARE_KDF_ROUNDS) -> bytes:
    raw = path.read_bytes()
    if len(raw) != 64 or not raw.startswith(SHARE_MAGIC):
        raise CardError(f"{path}: not a DKEK share file")
    key, iv = _share_key(password, raw[8:16], rounds)
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    try:
        share = unpad.update(dec.update(raw[16:]) + dec.finalize()) + unpad.finalize()
    except ValueError:
        raise CardError(f"{path}: wrong password") from None
    if len(share) != 32:
        raise CardError(f"{path}: wrong password")
    return share
