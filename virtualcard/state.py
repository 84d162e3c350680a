"""Card state on disk: keys, data objects, PIN/PUK counters and the management key.

Everything a real card keeps in EEPROM lives in one state directory, so a card survives its
process (``virtualcard down`` / ``up``) like a real card survives removal::

    STATE_DIR/card.json          PIN, PUK, retry counters, management key, serial, profile
    STATE_DIR/objects/5fc105.bin  PIV data objects (the value inside tag 53)
    STATE_DIR/keys/9a.pem         private keys, PKCS#8 PEM, one per slot

Every write goes to a temporary file in the same directory and is renamed over the target
(atomic on POSIX), so a card killed mid-write never leaves a half-written key or counter.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .apdu import tlv
from .profiles import ALG_3DES

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_PIN = "123456"
DEFAULT_PUK = "12345678"
DEFAULT_MGMT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")

# Data object tags (SP 800-73-4 part 1, table 3).
TAG_CCC = 0x5FC107
TAG_CHUID = 0x5FC102
TAG_DISCOVERY = 0x7E
TAG_KEY_HISTORY = 0x5FC10C
PIV_AID = bytes.fromhex("A000000308000010000100")

# Certificate data object for each key slot.
CERT_TAGS: dict[int, int] = {0x9A: 0x5FC105, 0x9C: 0x5FC10A, 0x9D: 0x5FC10B, 0x9E: 0x5FC101}
CERT_TAGS.update({0x82 + i: 0x5FC10D + i for i in range(20)})


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Counters:
    pin: str = DEFAULT_PIN
    puk: str = DEFAULT_PUK
    pin_tries_left: int = 3
    puk_tries_left: int = 3
    pin_retries: int = 3
    puk_retries: int = 3
    mgmt_alg: int = ALG_3DES
    mgmt_key: str = DEFAULT_MGMT_KEY.hex()
    serial: int = 0
    profile: str = "fast"


class CardState:
    """One card's persistent memory; methods read and write the files directly."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._counters: Counters | None = None

    # -- life cycle --------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return (self.dir / "card.json").exists()

    def initialise(self, profile: str = "fast", pin_retries: int = 3, puk_retries: int = 3) -> None:
        """Manufacture a blank card: fresh serial, CHUID with a random GUID, discovery object.

        A random GUID per card matters: OpenSC derives the token serial from it, and two cards
        with one serial would confuse OpenSC's caches and any test that tells cards apart.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        c = Counters(
            serial=secrets.randbelow(90_000_000) + 10_000_000,
            profile=profile,
            pin_retries=pin_retries,
            puk_retries=puk_retries,
            pin_tries_left=pin_retries,
            puk_tries_left=puk_retries,
        )
        self._counters = c
        self.save()
        fascn = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
        guid = secrets.token_bytes(16)
        chuid = tlv(0x30, fascn) + tlv(0x34, guid) + tlv(0x35, b"20991231") + tlv(0x3E, b"") + tlv(0xFE, b"")
        self.put_object(TAG_CHUID, chuid)
        discovery = tlv(0x4F, PIV_AID) + tlv(0x5F2F, b"\x40\x00")
        self.put_object(TAG_DISCOVERY, discovery)

    # -- counters ----------------------------------------------------------------------
    @property
    def counters(self) -> Counters:
        if self._counters is None:
            raw = json.loads((self.dir / "card.json").read_text())
            self._counters = Counters(**raw)
        return self._counters

    def save(self) -> None:
        atomic_write(self.dir / "card.json", json.dumps(asdict(self.counters), indent=1).encode())

    # -- data objects ------------------------------------------------------------------
    def _object_path(self, tag: int) -> Path:
        return self.dir / "objects" / f"{tag:x}.bin"

    def get_object(self, tag: int) -> bytes | None:
        try:
            return self._object_path(tag).read_bytes()
        except FileNotFoundError:
            return None

    def put_object(self, tag: int, value: bytes) -> None:
        """Store a data object; an empty value deletes it (as PUT DATA with an empty 53 does)."""
        if value:
            atomic_write(self._object_path(tag), value)
        else:
            self._object_path(tag).unlink(missing_ok=True)
        if tag in CERT_TAGS.values():
            self._update_key_history()

    def _update_key_history(self) -> None:
        """Key history object: how many retired slots hold certificates (OpenSC reads it)."""
        retired = [s for s in range(0x82, 0x96) if self._object_path(CERT_TAGS[s]).exists()]
        n = max((s - 0x82 + 1 for s in retired), default=0)
        if n:
            value = tlv(0xC1, bytes([n])) + tlv(0xC2, b"\x00") + tlv(0xFE, b"")
            atomic_write(self._object_path(TAG_KEY_HISTORY), value)
        else:
            self._object_path(TAG_KEY_HISTORY).unlink(missing_ok=True)

    def put_certificate(self, slot: int, der: bytes) -> None:
        """Certificate object as PIV stores it: 70 cert, 71 certinfo (uncompressed), FE LRC."""
        self.put_object(CERT_TAGS[slot], tlv(0x70, der) + tlv(0x71, b"\x00") + tlv(0xFE, b""))

    # -- keys --------------------------------------------------------------------------
    def _key_path(self, slot: int) -> Path:
        return self.dir / "keys" / f"{slot:02x}.pem"

    def get_key(self, slot: int) -> PrivateKey | None:
        try:
            pem = self._key_path(slot).read_bytes()
        except FileNotFoundError:
            return None
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        return key

    def put_key(self, slot: int, key: PrivateKey) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(self._key_path(slot), pem)

    def slots_with_keys(self) -> list[int]:
        return sorted(int(p.stem, 16) for p in (self.dir / "keys").glob("*.pem"))
