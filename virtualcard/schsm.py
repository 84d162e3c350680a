"""A SmartCard-HSM (the card in the Nitrokey HSM 2): the card side of OpenSC's ``sc-hsm`` driver.

What OpenSC sends (``card-sc-hsm.c``, ``pkcs15-sc-hsm.c``, ``pkcs15init/pkcs15-sc-hsm.c``,
``sc-hsm-tool``) and what this card answers:

- SELECT of the application (AID E8 2B 06 01 04 01 81 C3 1F 02 01; reselecting logs out) and of
  elementary files by file identifier;
- VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER for the user PIN (reference 81, 6-16
  ASCII digits; a changed PIN keeps its length, as on the card) and the SO PIN (88, 8 bytes),
  with retry counters and blocking; references 85/86 (PIN pad, biometrics) do not exist;
- INITIALIZE DEVICE (80 50): options, user PIN, initialisation code (the SO PIN), retry
  counter; a second initialisation needs the SO PIN and wipes keys and files;
- ENUMERATE OBJECTS (80 58): the two-byte identifiers of keys (CCxx) and files;
- READ BINARY / UPDATE BINARY with odd instruction (B1 / D7, offset in 54, data in 53) and
  DELETE FILE (E4): the PKCS#15 descriptors (C4xx private keys, C8xx certificates, C9xx data),
  certificates and requests (CExx, CAxx), data (CFxx public, CDxx PIN-protected), the device
  certificate EF.C_DevAut (2F02) and EF.TokenInfo (2F03);
- GENERATE ASYMMETRIC KEY PAIR (00 46, key id in P1): EC P-256/P-384 and RSA, answered with a
  self-signed CV certificate request (see :mod:`virtualcard.cvc`);
- SIGN (80 68): raw RSA (20, the host pads), RSA PKCS#1 (30, 31, 33), raw ECDSA over a hash
  (70) and ECDSA with the hash on the card (71-75), DER out; DECIPHER (80 62): raw RSA (21) and
  ECDH (80);
- GET CHALLENGE.

- IMPORT DKEK SHARE (80 52), WRAP KEY (80 72) and UNWRAP KEY (80 74): the device key
  encryption key is the XOR of the shares announced at INITIALIZE (tag 92); a key generated or
  unwrapped under the complete DKEK can be wrapped and unwrapped into another card with the same
  DKEK (``sc-hsm-tool --create-dkek-share/--import-dkek-share/--wrap-key/--unwrap-key``).  The
  blob layout is this card's own (see ``_wrap``).
State lives in the state directory (``schsm.json``, ``keys/ccXX.pem``, ``files/XXXX.bin``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import cmac, hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import profiles as P
from .apdu import (
    SW_AUTH_BLOCKED,
    SW_CONDITIONS,
    SW_INCORRECT_P1P2,
    SW_INS_NOT_SUPPORTED,
    SW_NOT_FOUND,
    SW_OK,
    SW_REF_NOT_FOUND,
    SW_SECURITY_STATUS,
    SW_WRONG_DATA,
    SW_WRONG_LENGTH,
    CommandAPDU,
    SWError,
    parse_tlv,
    tlv,
    tlv_dict,
)
from .cvc import authenticated_request, curve_by_prime, make_cvc
from .state import PrivateKey, atomic_write

log = logging.getLogger(__name__)

AID = bytes.fromhex("E82B0601040181C31F0201")
# The SmartCard-HSM's ATR; OpenSC's sc-hsm driver matches it and never asks the PIV driver.
ATR = bytes.fromhex("3BFE1800008131FE458031815448534D31738021408107FA")
# Firmware version reported in the SELECT response (tag 85, last two bytes); 3.x adds P-384.
VERSION = (3, 5)

DEFAULT_PIN = "123456"
DEFAULT_SO_PIN = "3537363231383830"
USER_PIN, SO_PIN = 0x81, 0x88
SO_RETRIES = 15
OPTION_ALLOW_RRC = 0x0001  # INITIALIZE option: RESET RETRY COUNTER permitted

KEY_PREFIX = 0xCC
PROTECTED_DATA_PREFIX = 0xCD
FID_DEVAUT = 0x2F02
FID_TOKENINFO = 0x2F03
FID_MF = 0x3F00
#: The transfer EF: OpenSC 0.26's sc-hsm driver writes a wrapped key here with UPDATE BINARY and
#: then sends UNWRAP KEY without data (0.23 sends the blob in the UNWRAP KEY APDU itself).
FID_TRANSFER = 0x2F10

# Private key operations (P2 of SIGN / DECIPHER), as OpenSC's card-sc-hsm.h names them.
ALG_RSA_RAW, ALG_RSA_DECRYPT = 0x20, 0x21
ALG_RSA_PKCS1, ALG_RSA_PKCS1_SHA1, ALG_RSA_PKCS1_SHA256 = 0x30, 0x31, 0x33
ALG_EC_RAW, ALG_EC_DH = 0x70, 0x80
EC_HASH: dict[int, hashes.HashAlgorithm] = {
    0x71: hashes.SHA1(),
    0x72: hashes.SHA224(),
    0x73: hashes.SHA256(),
    0x74: hashes.SHA384(),
    0x75: hashes.SHA512(),
}
_PREHASH: dict[int, hashes.HashAlgorithm] = {
    20: hashes.SHA1(),
    28: hashes.SHA224(),
    32: hashes.SHA256(),
    48: hashes.SHA384(),
    64: hashes.SHA512(),
}
OID_RSA_PREFIX = bytes.fromhex("04007F000702020201")
OID_EC_PREFIX = bytes.fromhex("04007F000702020202")
SW_END_OF_FILE = 0x6282
SW_NOT_INITIALISED = 0x6984  # reference data not usable


def alg_of(key: PrivateKey) -> int:
    """The profile's algorithm key (PIV numbering, shared with the PIV card's profiles)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": P.ALG_ECCP256, "secp384r1": P.ALG_ECCP384}.get(key.curve.name, 0)
    return {1024: P.ALG_RSA1024, 2048: P.ALG_RSA2048, 3072: P.ALG_RSA3072}.get(key.key_size, 0)


def device_chr(serial: int) -> str:
    """Holder reference of the device certificate; OpenSC's token serial is it minus 5 digits.

    16 characters, like a real card's (``DENK0100123`` + ``00001``): OpenSC's buffer for the
    outer CA reference of a request holds no more.
    """
    return f"DEVC{serial % 10_000_000:07d}00001"


@dataclass
class HSMCounters:
    serial: int = 0
    profile: str = "fast"
    initialised: bool = False
    options: int = OPTION_ALLOW_RRC
    pin: str = ""
    pin_retries: int = 3
    pin_tries_left: int = 3
    so_pin: str = ""  # 16 hex digits; empty until the first INITIALIZE DEVICE
    so_tries_left: int = SO_RETRIES
    dkek_shares: int = 0  # announced at INITIALIZE (tag 92); 0: no key backup
    dkek_outstanding: int = 0
    dkek: str = ""  # XOR of the imported shares, hex
    wrappable: list[int] = field(default_factory=list)  # keys made or imported under the complete DKEK


class HSMState:
    """One SmartCard-HSM's persistent memory; atomic writes as for the PIV card."""

    FAMILY_FILE = "schsm.json"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._counters: HSMCounters | None = None

    @classmethod
    def is_schsm(cls, directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / cls.FAMILY_FILE).exists()

    @property
    def manufactured(self) -> bool:
        return (self.dir / self.FAMILY_FILE).exists()

    def manufacture(self, profile: str = "fast") -> None:
        """A blank device as it leaves the factory: serial, device key and EF.C_DevAut, no PINs."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._counters = HSMCounters(serial=secrets.randbelow(9_000_000) + 1_000_000, profile=profile)
        device_key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(
            self.dir / "device-key.pem",
            device_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        # A self-issued device certificate: OpenSC decodes it for the serial, it checks no chain.
        cvc = make_cvc(device_key.public_key(), device_key, "DEVCA00001", device_chr(self._counters.serial))
        self.put_file(FID_DEVAUT, cvc)
        self.save()

    @property
    def counters(self) -> HSMCounters:
        if self._counters is None:
            self._counters = HSMCounters(**json.loads((self.dir / self.FAMILY_FILE).read_text()))
        return self._counters

    def save(self) -> None:
        atomic_write(self.dir / self.FAMILY_FILE, json.dumps(asdict(self.counters), indent=1).encode())

    # -- files -------------------------------------------------------------------------
    def _file_path(self, fid: int) -> Path:
        return self.dir / "files" / f"{fid:04x}.bin"

    def device_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key((self.dir / "device-key.pem").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def get_file(self, fid: int) -> bytes | None:
        try:
            return self._file_path(fid).read_bytes()
        except FileNotFoundError:
            return None

    def put_file(self, fid: int, data: bytes) -> None:
        atomic_write(self._file_path(fid), data)

    def delete_file(self, fid: int) -> bool:
        path = self.key_path(fid & 0xFF) if fid >> 8 == KEY_PREFIX else self._file_path(fid)
        if not path.exists():
            return False
        path.unlink()
        return True

    def files(self) -> list[int]:
        return sorted(int(p.stem, 16) for p in (self.dir / "files").glob("*.bin"))

    # -- keys --------------------------------------------------------------------------
    def key_path(self, key_id: int) -> Path:
        return self.dir / "keys" / f"cc{key_id:02x}.pem"

    def get_key(self, key_id: int) -> PrivateKey | None:
        try:
            pem = self.key_path(key_id).read_bytes()
        except FileNotFoundError:
            return None
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        return key

    def put_key(self, key_id: int, key: PrivateKey) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(self.key_path(key_id), pem)

    def key_ids(self) -> list[int]:
        return sorted(int(p.stem[2:], 16) for p in (self.dir / "keys").glob("cc*.pem"))

    def wipe(self) -> None:
        """What INITIALIZE DEVICE erases: every key and file but the device certificate."""
        for kid in self.key_ids():
            self.key_path(kid).unlink()
        for fid in self.files():
            if fid != FID_DEVAUT:
                self._file_path(fid).unlink()


def _ascii_pin(data: bytes) -> str:
    try:
        pin = data.decode("ascii")
    except UnicodeDecodeError:
        raise SWError(SW_WRONG_DATA, "PIN not ASCII") from None
    return pin


class SmartCardHSM:
    """The SmartCard-HSM application: security status in RAM, the rest in :class:`HSMState`."""

    def __init__(self, state: HSMState, profile: P.Profile, sleep: Callable[[float], None] = time.sleep):
        self.state = state
        self.profile = profile
        self._sleep = sleep
        self._keys: dict[int, PrivateKey] = {}
        self.reset()
        self._dispatch: dict[tuple[int, int], Callable[[CommandAPDU], bytes]] = {
            (0x00, 0xA4): self.select,
            (0x00, 0x20): self.verify,
            (0x00, 0x24): self.change_reference_data,
            (0x00, 0x2C): self.reset_retry_counter,
            (0x80, 0x50): self.initialize,
            (0x80, 0x58): self.enumerate_objects,
            (0x00, 0xB1): self.read_binary,
            (0x00, 0xD7): self.update_binary,
            (0x00, 0xE4): self.delete_file,
            (0x00, 0x46): self.generate_key_pair,
            (0x80, 0x68): self.sign,
            (0x80, 0x62): self.decipher,
            (0x00, 0x84): self.get_challenge,
            (0x80, 0x52): self.import_dkek_share,
            (0x80, 0x72): self.wrap_key,
            (0x80, 0x74): self.unwrap_key,
        }

    # -- card OS -----------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on / warm reset: security status lost, no file selected."""
        self.pin_ok = False
        self.so_ok = False
        self.current_ef: int | None = None
        self._pending = b""
        self._chain: tuple[tuple[int, int, int, int], bytearray] | None = None

    def process(self, raw: bytes) -> bytes:
        try:
            cmd = CommandAPDU.parse(raw)
            if cmd.ins == 0xC0:
                data, self._pending = self._pending, b""
                if not data:
                    raise SWError(SW_CONDITIONS, "nothing to GET RESPONSE")
                return self._respond(data, cmd)
            self._pending = b""
            key = (cmd.cla & ~0x10 & 0xFF, cmd.ins, cmd.p1, cmd.p2)
            if self._chain is not None and self._chain[0] != key:
                self._chain = None
            if cmd.chained:  # command chaining (CLA bit 10): collect, answer 9000, run on the last part
                if self._chain is None:
                    self._chain = (key, bytearray())
                self._chain[1].extend(cmd.data)
                return SW_OK.to_bytes(2, "big")
            if self._chain is not None:
                data = bytes(self._chain[1]) + cmd.data
                self._chain = None
                cmd = CommandAPDU(cmd.cla, cmd.ins, cmd.p1, cmd.p2, data, cmd.le, cmd.extended)
            handler = self._dispatch.get((cmd.cla & 0xE0, cmd.ins))
            if handler is None:
                raise SWError(SW_INS_NOT_SUPPORTED if cmd.cla in (0x00, 0x80) else 0x6E00)
            return self._respond(handler(cmd), cmd)
        except _Status as s:
            return s.data + s.sw.to_bytes(2, "big")
        except SWError as e:
            log.debug("APDU %s -> %04X", raw[:4].hex(), e.sw)
            return e.sw.to_bytes(2, "big")

    def _respond(self, data: bytes, cmd: CommandAPDU) -> bytes:
        limit = 65536 if cmd.extended else 256
        head, self._pending = data[:limit], data[limit:]
        if self._pending:
            return head + bytes([0x61, min(len(self._pending), 256) & 0xFF])
        return head + SW_OK.to_bytes(2, "big")

    @property
    def counters(self) -> HSMCounters:
        return self.state.counters

    def _need_pin(self) -> None:
        if not self.pin_ok:
            raise SWError(SW_SECURITY_STATUS, "user PIN not verified")

    # -- SELECT ------------------------------------------------------------------------
    def select(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 == 0x04:
            if cmd.data != AID:
                raise SWError(SW_NOT_FOUND, "unknown application")
            self.reset()  # selecting the application again is how OpenSC logs out
            prop = bytes([0x00, 0x01, 0x00, 0x00, *VERSION])  # options, (unused), firmware version
            fci = tlv(0x82, b"\x38") + tlv(0x84, AID) + tlv(0x85, prop)
            return b"" if cmd.p2 & 0x0C == 0x0C else tlv(0x62, fci)
        if cmd.p1 not in (0x00, 0x02, 0x08, 0x09) or len(cmd.data) != 2:
            raise SWError(SW_INCORRECT_P1P2)
        fid = int.from_bytes(cmd.data, "big")
        if fid == FID_MF:
            self.current_ef = None
            return b"" if cmd.p2 & 0x0C == 0x0C else tlv(0x62, tlv(0x82, b"\x38") + tlv(0x83, cmd.data))
        if fid >> 8 == KEY_PREFIX:
            if self.state.get_key(fid & 0xFF) is None:
                raise SWError(SW_NOT_FOUND)
            size = 0
        else:
            content = self.state.get_file(fid)
            if content is None:
                raise SWError(SW_NOT_FOUND)
            size = len(content)
        self.current_ef = fid
        if cmd.p2 & 0x0C == 0x0C:
            return b""
        return tlv(0x62, tlv(0x80, size.to_bytes(2, "big")) + tlv(0x82, b"\x01") + tlv(0x83, cmd.data))

    # -- PINs --------------------------------------------------------------------------
    def _check_user_pin(self, offered: str) -> None:
        c = self.counters
        if not c.initialised:
            raise SWError(SW_NOT_INITIALISED, "device not initialised")
        if c.pin_tries_left <= 0:
            raise SWError(SW_AUTH_BLOCKED)
        if secrets.compare_digest(offered.encode(), c.pin.encode()):
            c.pin_tries_left = c.pin_retries
            self.state.save()
            return
        c.pin_tries_left -= 1
        self.pin_ok = False
        self.state.save()
        raise SWError(0x63C0 | c.pin_tries_left)

    def _check_so_pin(self, offered: bytes) -> None:
        c = self.counters
        if not c.so_pin:
            raise SWError(SW_NOT_INITIALISED, "no SO PIN before INITIALIZE DEVICE")
        if len(offered) != 8:
            raise SWError(SW_WRONG_LENGTH, "SO PIN is 8 bytes")
        if c.so_tries_left <= 0:
            raise SWError(SW_AUTH_BLOCKED)
        if secrets.compare_digest(offered, bytes.fromhex(c.so_pin)):
            c.so_tries_left = SO_RETRIES
            self.state.save()
            return
        c.so_tries_left -= 1
        self.so_ok = False
        self.state.save()
        raise SWError(0x63C0 | min(c.so_tries_left, 15))

    def _check_new_pin(self, pin: str) -> None:
        if not (6 <= len(pin) <= 16) or not pin.isdigit():
            raise SWError(SW_WRONG_DATA, "user PIN must be 6-16 digits")

    def verify(self, cmd: CommandAPDU) -> bytes:
        c = self.counters
        if cmd.p1 != 0x00:
            raise SWError(SW_INCORRECT_P1P2)
        if cmd.p2 == USER_PIN:
            if not cmd.data:  # status query
                if not c.initialised:
                    raise SWError(SW_NOT_INITIALISED)
                if c.pin_tries_left <= 0:
                    raise SWError(SW_AUTH_BLOCKED)
                if self.pin_ok:
                    return b""
                raise SWError(0x63C0 | c.pin_tries_left)
            self._check_user_pin(_ascii_pin(cmd.data))
            self.pin_ok = True
            return b""
        if cmd.p2 == SO_PIN:
            if not cmd.data:
                if c.so_tries_left <= 0:
                    raise SWError(SW_AUTH_BLOCKED)
                if self.so_ok:
                    return b""
                raise SWError(0x63C0 | min(c.so_tries_left, 15))
            self._check_so_pin(cmd.data)
            self.so_ok = True
            return b""
        raise SWError(SW_REF_NOT_FOUND, "no such PIN (85/86: no PIN pad, no biometrics)")

    def change_reference_data(self, cmd: CommandAPDU) -> bytes:
        c = self.counters
        if cmd.p1 != 0x00:
            raise SWError(SW_INCORRECT_P1P2)
        if cmd.p2 == USER_PIN:
            if len(cmd.data) % 2 or not cmd.data:
                raise SWError(SW_WRONG_LENGTH, "old and new PIN must have the same length")
            half = len(cmd.data) // 2
            old, new = _ascii_pin(cmd.data[:half]), _ascii_pin(cmd.data[half:])
            self._check_user_pin(old)
            self._check_new_pin(new)
            c.pin = new
            self.pin_ok = True
            self.state.save()
            return b""
        if cmd.p2 == SO_PIN:
            if len(cmd.data) != 16:
                raise SWError(SW_WRONG_LENGTH, "old and new SO PIN, 8 bytes each")
            self._check_so_pin(cmd.data[:8])
            c.so_pin = cmd.data[8:].hex().upper()
            self.state.save()
            return b""
        raise SWError(SW_REF_NOT_FOUND)

    def reset_retry_counter(self, cmd: CommandAPDU) -> bytes:
        c = self.counters
        if cmd.p2 != USER_PIN or cmd.p1 not in (0x00, 0x01):
            raise SWError(SW_INCORRECT_P1P2)
        if not c.options & OPTION_ALLOW_RRC:
            raise SWError(SW_CONDITIONS, "RESET RETRY COUNTER not enabled at initialisation")
        self._check_so_pin(cmd.data[:8])
        if cmd.p1 == 0x00:
            new = _ascii_pin(cmd.data[8:])
            self._check_new_pin(new)
            c.pin = new
        elif len(cmd.data) != 8:
            raise SWError(SW_WRONG_LENGTH)
        c.pin_tries_left = c.pin_retries
        self.state.save()
        return b""

    # -- INITIALIZE DEVICE -------------------------------------------------------------
    def initialize(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 or cmd.p2:
            raise SWError(SW_INCORRECT_P1P2)
        fields = tlv_dict(cmd.data)
        if 0x81 not in fields or 0x82 not in fields:
            raise SWError(SW_WRONG_DATA, "user PIN (81) and initialisation code (82) needed")
        init_code = fields[0x82]
        if len(init_code) != 8:
            raise SWError(SW_WRONG_DATA, "initialisation code is 8 bytes")
        c = self.counters
        if c.so_pin:
            self._check_so_pin(init_code)  # re-initialisation needs the current SO PIN
        pin = _ascii_pin(fields[0x81])
        self._check_new_pin(pin)
        retries = fields.get(0x91, b"\x03")
        if len(retries) != 1 or not 1 <= retries[0] <= 10:
            raise SWError(SW_WRONG_DATA, "retry counter 1-10")
        options = fields.get(0x80, b"\x00\x01")
        self.state.wipe()
        self._keys.clear()
        c.so_pin = c.so_pin or init_code.hex().upper()
        c.so_tries_left = SO_RETRIES
        c.pin, c.pin_retries, c.pin_tries_left = pin, retries[0], retries[0]
        c.options = int.from_bytes(options, "big")
        shares = fields.get(0x92, b"\x00")
        if len(shares) != 1:
            raise SWError(SW_WRONG_DATA, "DKEK shares (92) is one byte")
        c.dkek_shares = c.dkek_outstanding = shares[0]
        c.dkek = bytes(32).hex()
        c.wrappable = []
        c.initialised = True
        self.state.save()
        self.reset()
        return b""

    # -- file system -------------------------------------------------------------------
    def enumerate_objects(self, cmd: CommandAPDU) -> bytes:
        # key 0 is the device authentication key: listed (so OpenSC never picks id 0), never usable
        ids = [KEY_PREFIX << 8] + [(KEY_PREFIX << 8) | k for k in self.state.key_ids() if k] + self.state.files()
        return b"".join(i.to_bytes(2, "big") for i in sorted(ids))

    def _target(self, cmd: CommandAPDU) -> int:
        fid = (cmd.p1 << 8) | cmd.p2
        if fid == 0:
            if self.current_ef is None:
                raise SWError(SW_CONDITIONS, "no current EF")
            return self.current_ef
        return fid

    @staticmethod
    def _offset(fields: dict[int, bytes]) -> int:
        off = fields.get(0x54)
        if off is None or len(off) != 2:
            raise SWError(SW_WRONG_DATA, "offset (54) missing")
        return int.from_bytes(off, "big")

    def read_binary(self, cmd: CommandAPDU) -> bytes:
        fid = self._target(cmd)
        if fid >> 8 == KEY_PREFIX:
            raise SWError(SW_SECURITY_STATUS, "keys never leave the card")
        if fid >> 8 == PROTECTED_DATA_PREFIX:
            self._need_pin()
        content = self.state.get_file(fid)
        if content is None:
            raise SWError(SW_NOT_FOUND)
        self.current_ef = fid
        offset = self._offset(tlv_dict(cmd.data))
        le = cmd.le or 256
        chunk = content[offset : offset + le]
        if len(chunk) < le:
            raise _Status(SW_END_OF_FILE, chunk)
        return chunk

    def update_binary(self, cmd: CommandAPDU) -> bytes:
        fid = self._target(cmd)
        if fid >> 8 == KEY_PREFIX or fid == FID_DEVAUT or fid == FID_MF:
            raise SWError(SW_CONDITIONS, "not writable")
        self._need_pin()
        offset = None
        data = b""
        for tag, value in parse_tlv(cmd.data):
            if tag == 0x54:
                offset = int.from_bytes(value, "big")
            elif tag == 0x53:
                data = value
        if offset is None:
            raise SWError(SW_WRONG_DATA, "offset (54) missing")
        # a transfer starts at offset 0: what an earlier, longer blob left there is not part of it
        content = bytearray(b"" if fid == FID_TRANSFER and offset == 0 else self.state.get_file(fid) or b"")
        if offset > len(content):
            content.extend(b"\x00" * (offset - len(content)))
        content[offset : offset + len(data)] = data
        self.state.put_file(fid, bytes(content))
        self.current_ef = fid
        return b""

    def delete_file(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0x02 or len(cmd.data) != 2:
            raise SWError(SW_INCORRECT_P1P2)
        fid = int.from_bytes(cmd.data, "big")
        if fid == FID_DEVAUT:
            raise SWError(SW_CONDITIONS, "device certificate cannot be deleted")
        self._need_pin()
        if not self.state.delete_file(fid):
            raise SWError(SW_NOT_FOUND)
        if fid >> 8 == KEY_PREFIX:
            self._keys.pop(fid & 0xFF, None)
            self._set_wrappable(fid & 0xFF, False)
        if self.current_ef == fid:
            self.current_ef = None
        return b""

    # -- keys --------------------------------------------------------------------------
    def generate_key_pair(self, cmd: CommandAPDU) -> bytes:
        self._need_pin()
        key_id = cmd.p1
        if key_id == 0:
            raise SWError(SW_INCORRECT_P1P2, "key id 0 is the device key")
        body = tlv_dict(cmd.data)
        if 0x7F49 not in body:
            raise SWError(SW_WRONG_DATA, "no public key template (7F49)")
        pk: dict[int, bytes] = {}
        for tag, value in parse_tlv(body[0x7F49]):
            pk.setdefault(tag, value)
        oid = pk.get(0x06, b"")
        start = time.monotonic()
        key: PrivateKey
        if oid.startswith(OID_RSA_PREFIX):
            bits = int.from_bytes(pk.get(0x02, b"\x08\x00"), "big")
            exponent = int.from_bytes(pk.get(0x82, b"\x01\x00\x01"), "big")
            alg = {1024: P.ALG_RSA1024, 2048: P.ALG_RSA2048, 3072: P.ALG_RSA3072}.get(bits)
            if alg is None or alg not in self.profile.algorithms or exponent != 65537:
                raise SWError(SW_WRONG_DATA, f"RSA-{bits} e={exponent} not supported")
            key = rsa.generate_private_key(exponent, bits)
        elif oid.startswith(OID_EC_PREFIX):
            curve = curve_by_prime(pk.get(0x81, b""))
            if curve is None:
                raise SWError(SW_WRONG_DATA, "unsupported curve")
            key = ec.generate_private_key(curve.ec_curve)
            alg = alg_of(key)
            if alg not in self.profile.algorithms:
                raise SWError(SW_WRONG_DATA, f"{curve.name} not in this profile")
        else:
            raise SWError(SW_WRONG_DATA, "unknown key algorithm")
        car = body.get(0x42, b"UTCA00001").decode("ascii", "replace")
        chr_ = body.get(0x5F20, device_chr(self.counters.serial).encode()).decode("ascii", "replace")
        self.state.put_key(key_id, key)
        self._keys[key_id] = key
        self._set_wrappable(key_id, self._dkek_complete())
        request = authenticated_request(
            make_cvc(key.public_key(), key, car, chr_), self.state.device_key(), device_chr(self.counters.serial)
        )
        self._delay(self.profile.keygen_delay(alg), start)
        return request

    def _key(self, key_id: int) -> PrivateKey:
        if key_id == 0:
            raise SWError(SW_SECURITY_STATUS, "the device key signs nothing for the host")
        if key_id not in self._keys:
            key = self.state.get_key(key_id)
            if key is None:
                raise SWError(SW_NOT_FOUND, f"no key {key_id:02X}")
            self._keys[key_id] = key
        return self._keys[key_id]

    def sign(self, cmd: CommandAPDU) -> bytes:
        self._need_pin()
        key = self._key(cmd.p1)
        alg, data = cmd.p2, cmd.data
        start = time.monotonic()
        if isinstance(key, rsa.RSAPrivateKey):
            if alg == ALG_RSA_RAW:
                out = _rsa_raw(key, data)
            elif alg == ALG_RSA_PKCS1:
                out = _rsa_raw(key, _pkcs1_type1(data, (key.key_size + 7) // 8))
            elif alg in (ALG_RSA_PKCS1_SHA1, ALG_RSA_PKCS1_SHA256):
                h = hashes.SHA1() if alg == ALG_RSA_PKCS1_SHA1 else hashes.SHA256()
                out = key.sign(data, padding.PKCS1v15(), h)
            else:
                raise SWError(SW_INCORRECT_P1P2, f"algorithm {alg:02X} for RSA")
        else:
            if alg == ALG_EC_RAW:
                digest = data
            elif alg in EC_HASH:
                hh = hashes.Hash(EC_HASH[alg])
                hh.update(data)
                digest = hh.finalize()
            else:
                raise SWError(SW_INCORRECT_P1P2, f"algorithm {alg:02X} for EC")
            out = _ecdsa(key, digest)
        self._delay(self.profile.sign_delay(alg_of(key)), start)
        return out

    def decipher(self, cmd: CommandAPDU) -> bytes:
        self._need_pin()
        key = self._key(cmd.p1)
        start = time.monotonic()
        if cmd.p2 == ALG_RSA_DECRYPT and isinstance(key, rsa.RSAPrivateKey):
            out = _rsa_raw(key, cmd.data)
        elif cmd.p2 == ALG_EC_DH and isinstance(key, ec.EllipticCurvePrivateKey):
            try:
                peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, cmd.data)
            except ValueError:
                raise SWError(SW_WRONG_DATA, "bad EC point") from None
            out = b"\x04" + key.exchange(ec.ECDH(), peer)
        else:
            raise SWError(SW_INCORRECT_P1P2)
        self._delay(self.profile.sign_delay(alg_of(key)), start)
        return out

    # -- DKEK: key backup and cloning ----------------------------------------------------
    def _dkek_complete(self) -> bool:
        c = self.counters
        return c.dkek_shares > 0 and c.dkek_outstanding == 0

    def _set_wrappable(self, key_id: int, on: bool) -> None:
        c = self.counters
        ids = set(c.wrappable) - {key_id}
        if on:
            ids.add(key_id)
        c.wrappable = sorted(ids)
        self.state.save()

    def _dkek_status(self) -> bytes:
        c = self.counters
        return bytes([c.dkek_shares, c.dkek_outstanding]) + _kcv(bytes.fromhex(c.dkek or "00" * 32))

    def import_dkek_share(self, cmd: CommandAPDU) -> bytes:
        """No data: DKEK status.  32 bytes: one more share, XORed into the DKEK."""
        c = self.counters
        if not cmd.data:
            return self._dkek_status()
        if not c.initialised:
            raise SWError(SW_NOT_INITIALISED)
        if len(cmd.data) != 32:
            raise SWError(SW_WRONG_LENGTH, "a DKEK share is 32 bytes")
        if c.dkek_outstanding == 0:
            raise SWError(SW_CONDITIONS, "no DKEK share outstanding")
        c.dkek = bytes(a ^ b for a, b in zip(bytes.fromhex(c.dkek), cmd.data, strict=True)).hex()
        c.dkek_outstanding -= 1
        self.state.save()
        return self._dkek_status()

    def wrap_key(self, cmd: CommandAPDU) -> bytes:
        self._need_pin()
        if cmd.p2 != 0x92:
            raise SWError(SW_INCORRECT_P1P2)
        if not self._dkek_complete():
            raise SWError(SW_CONDITIONS, "no complete DKEK")
        if cmd.p1 not in self.counters.wrappable:
            raise SWError(SW_CONDITIONS, "key was not made under this DKEK")
        return _wrap(bytes.fromhex(self.counters.dkek), self._key(cmd.p1))

    def unwrap_key(self, cmd: CommandAPDU) -> bytes:
        self._need_pin()
        if cmd.p2 != 0x93 or cmd.p1 == 0:
            raise SWError(SW_INCORRECT_P1P2)
        if not self._dkek_complete():
            raise SWError(SW_CONDITIONS, "no complete DKEK")
        blob = cmd.data
        if not blob:  # OpenSC 0.26: the blob was written to the transfer EF first
            blob = self.state.get_file(FID_TRANSFER) or b""
            self.state.delete_file(FID_TRANSFER)  # used once, whatever the outcome
            if self.current_ef == FID_TRANSFER:
                self.current_ef = None
        if self.state.get_key(cmd.p1) is not None:
            raise SWError(SW_CONDITIONS, "key reference in use")
        key = _unwrap(bytes.fromhex(self.counters.dkek), blob)
        if alg_of(key) not in self.profile.algorithms:
            raise SWError(SW_WRONG_DATA, "key algorithm not in this profile")
        self.state.put_key(cmd.p1, key)
        self._keys[cmd.p1] = key
        self._set_wrappable(cmd.p1, True)
        return b""

    def get_challenge(self, cmd: CommandAPDU) -> bytes:
        n = cmd.le or 0
        if not 1 <= n <= 1024:
            raise SWError(SW_WRONG_LENGTH)
        return secrets.token_bytes(n)

    def _delay(self, seconds: float, start: float) -> None:
        remaining = seconds - (time.monotonic() - start)
        if remaining > 0:
            self._sleep(remaining)


class _Status(Exception):
    """A response with data and a warning status word (e.g. 6282 end of file)."""

    def __init__(self, sw: int, data: bytes) -> None:
        super().__init__(f"SW {sw:04X}")
        self.sw, self.data = sw, data


# Key blob: KCV(8) | key type (5 RSA, 12 EC) | AES-256-CBC(Kenc, zero IV,
# random(8) | length(2) | PKCS#8 | 80 00.. padding) | AES-CMAC(Kmac) over all before.
# Modelled on the card's blob (KCV, type, CBC, CMAC); it moves keys between these virtual cards,
# not to or from real ones.
BLOB_RSA, BLOB_EC = 5, 12


def _kcv(dkek: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(dkek)
    return h.finalize()[:8]


def _derive(dkek: bytes, counter: int) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(dkek + counter.to_bytes(4, "big"))
    return h.finalize()


def _cmac(key: bytes, data: bytes) -> bytes:
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def _wrap(dkek: bytes, key: PrivateKey) -> bytes:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    plain = secrets.token_bytes(8) + len(der).to_bytes(2, "big") + der + b"\x80"
    plain += b"\x00" * (-len(plain) % 16)
    enc = Cipher(algorithms.AES(_derive(dkek, 1)), modes.CBC(bytes(16))).encryptor()
    kind = BLOB_RSA if isinstance(key, rsa.RSAPrivateKey) else BLOB_EC
    blob = _kcv(dkek) + bytes([kind]) + enc.update(plain) + enc.finalize()
    return blob + _cmac(_derive(dkek, 2), blob)


def _unwrap(dkek: bytes, blob: bytes) -> PrivateKey:
    if len(blob) < 8 + 1 + 16 + 16 or (len(blob) - 25) % 16:
        raise SWError(SW_WRONG_DATA, "not a key blob")
    body, mac = blob[:-16], blob[-16:]
    if body[:8] != _kcv(dkek):
        raise SWError(SW_WRONG_DATA, "key blob made under another DKEK")
    if not secrets.compare_digest(mac, _cmac(_derive(dkek, 2), body)):
        raise SWError(SW_WRONG_DATA, "key blob MAC wrong")
    dec = Cipher(algorithms.AES(_derive(dkek, 1)), modes.CBC(bytes(16))).decryptor()
    plain = dec.update(body[9:]) + dec.finalize()
    n = int.from_bytes(plain[8:10], "big")
    try:
        key = serialization.load_der_private_key(plain[10 : 10 + n], password=None)
    except ValueError:
        raise SWError(SW_WRONG_DATA, "key blob content") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise SWError(SW_WRONG_DATA, "key type")
    if body[8] != (BLOB_RSA if isinstance(key, rsa.RSAPrivateKey) else BLOB_EC):
        raise SWError(SW_WRONG_DATA, "key type byte")
    return key


def _rsa_raw(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    n = key.private_numbers()
    k = (key.key_size + 7) // 8
    if len(data) != k:
        raise SWError(SW_WRONG_DATA, "RSA input must be modulus-sized")
    m = int.from_bytes(data, "big")
    if m >= n.public_numbers.n:
        raise SWError(SW_WRONG_DATA, "RSA input >= modulus")
    m1 = pow(m, n.dmp1, n.p)
    m2 = pow(m, n.dmq1, n.q)
    h = (n.iqmp * (m1 - m2)) % n.p
    return (m2 + h * n.q).to_bytes(k, "big")


def _pkcs1_type1(data: bytes, k: int) -> bytes:
    if len(data) > k - 11:
        raise SWError(SW_WRONG_DATA, "data too long for PKCS#1 padding")
    return b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data


def _ecdsa(key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """ECDSA over a hash of any length: shorter is the same integer, longer is truncated."""
    size = (key.curve.key_size + 7) // 8
    if len(digest) not in _PREHASH:
        if not digest:
            raise SWError(SW_WRONG_DATA, "empty hash")
        digest = digest[:size].rjust(size, b"\x00")
        if len(digest) not in _PREHASH:
            raise SWError(SW_WRONG_DATA, f"hash of {len(digest)} bytes")
    return key.sign(digest, ec.ECDSA(utils.Prehashed(_PREHASH[len(digest)])))

