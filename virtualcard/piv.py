"""The PIV application: SP 800-73-4 APDU dispatch plus the Yubico extensions OpenSC and
``yubico-piv-tool`` use.

The card OS concerns (chaining, GET RESPONSE, security status) live in :class:`PIVCard`;
persistent memory in :class:`virtualcard.state.CardState`; limits and latency in
:class:`virtualcard.profiles.Profile`.  Crypto comes from ``cryptography``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as _ser
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
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
    tlv,
    tlv_dict,
)
from .state import CERT_TAGS, DEFAULT_MGMT_KEY, DEFAULT_PIN, DEFAULT_PUK, PIV_AID, CardState, PrivateKey

try:  # cryptography >= 43 moved 3DES to "decrepit"
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover
    TripleDES = algorithms.TripleDES  # type: ignore[misc,assignment]

log = logging.getLogger(__name__)

# ATR with the PIV AID in its historical bytes: OpenSC 0.23 then takes the plain PIV path.
# (3B 80 80 01 01 is mapped to "PIVKey", which disables every EC mechanism.)
ATR = bytes.fromhex("3B8B800180F9A00000030800001000C8")

YUBICO_VERSION = bytes([5, 4, 3])
KEY_MGMT = 0x9B
PIN_REF = 0x80
PUK_REF = 0x81


def _unpad_pin(data: bytes) -> str:
    if len(data) != 8:
        raise SWError(SW_WRONG_DATA, "PIN reference data must be 8 bytes")
    raw = data.rstrip(b"\xff")
    if b"\xff" in raw:
        raise SWError(SW_WRONG_DATA, "padding inside PIN")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise SWError(SW_WRONG_DATA, "PIN not ASCII") from None


def _cipher(alg: int, key: bytes) -> Cipher[modes.ECB]:
    if alg == P.ALG_3DES:
        return Cipher(TripleDES(key), modes.ECB())
    return Cipher(algorithms.AES(key), modes.ECB())


def _block_size(alg: int) -> int:
    return 8 if alg == P.ALG_3DES else 16


def _alg_of(key: PrivateKey) -> int:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": P.ALG_ECCP256, "secp384r1": P.ALG_ECCP384}[key.curve.name]
    return {1024: P.ALG_RSA1024, 2048: P.ALG_RSA2048, 3072: P.ALG_RSA3072}[key.key_size]


_PREHASH = {
    20: hashes.SHA1(),
    28: hashes.SHA224(),
    32: hashes.SHA256(),
    48: hashes.SHA384(),
    64: hashes.SHA512(),
}


class PIVCard:
    """A PIV card: security status in RAM, everything else in :class:`CardState`."""

    def __init__(self, state: CardState, profile: P.Profile, sleep: Callable[[float], None] = time.sleep):
        self.state = state
        self.profile = profile
        self._sleep = sleep
        self._keys: dict[int, PrivateKey] = {}
        self.reset()
        self._dispatch: dict[int, Callable[[CommandAPDU], bytes]] = {
            0xA4: self.select,
            0xCB: self.get_data,
            0xDB: self.put_data,
            0x20: self.verify,
            0x24: self.change_reference_data,
            0x2C: self.reset_retry_counter,
            0x87: self.general_authenticate,
            0x47: self.generate_key_pair,
            0xFD: lambda c: YUBICO_VERSION,
            0xF8: lambda c: self.state.counters.serial.to_bytes(4, "big"),
            0xFF: self.yk_set_management_key,
            0xFE: self.yk_import_key,
            0xFB: self.yk_reset,
        }

    # -- card OS ----------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on / warm reset: security status and buffers are lost, as on a real card."""
        self.pin_verified = False
        self.pin_fresh = False  # PIN verified and no 9C signature since ("PIN always")
        self.mgmt_authenticated = False
        self._mgmt_witness: bytes | None = None
        self._mgmt_challenge: bytes | None = None
        self._chain: tuple[tuple[int, int, int], bytearray] | None = None
        self._pending = b""

    def process(self, raw: bytes) -> bytes:
        """One command APDU in, one response APDU out (data + SW1 SW2)."""
        try:
            cmd = CommandAPDU.parse(raw)
            if cmd.cla & ~0x10 & 0xFF not in (0x00,):
                return b"\x6e\x00"
            if cmd.ins == 0xC0:
                return self._respond(b"", cmd, from_pending=True)
            self._pending = b""
            key = (cmd.ins, cmd.p1, cmd.p2)
            if self._chain is not None and self._chain[0] != key:
                self._chain = None
            if cmd.chained:
                if self._chain is None:
                    self._chain = (key, bytearray())
                self._chain[1].extend(cmd.data)
                return b"\x90\x00"
            if self._chain is not None:
                data = bytes(self._chain[1]) + cmd.data
                self._chain = None
                cmd = CommandAPDU(cmd.cla, cmd.ins, cmd.p1, cmd.p2, data, cmd.le, cmd.extended)
            handler = self._dispatch.get(cmd.ins)
            if handler is None:
                raise SWError(SW_INS_NOT_SUPPORTED)
            return self._respond(handler(cmd), cmd)
        except SWError as e:
            log.debug("APDU %s -> %04X", raw[:4].hex(), e.sw)
            return e.sw.to_bytes(2, "big")

    def _respond(self, data: bytes, cmd: CommandAPDU, from_pending: bool = False) -> bytes:
        """Send at most 256 bytes per short APDU; the rest waits for GET RESPONSE (61xx)."""
        if from_pending:
            data = self._pending
            if not data:
                raise SWError(SW_CONDITIONS, "nothing to GET RESPONSE")
        limit = 65536 if cmd.extended else 256
        head, self._pending = data[:limit], data[limit:]
        if self._pending:
            return head + bytes([0x61, min(len(self._pending), 256) & 0xFF])
        return head + SW_OK.to_bytes(2, "big")

    def _need_mgmt(self) -> None:
        if not self.mgmt_authenticated:
            raise SWError(SW_SECURITY_STATUS, "management key not authenticated")

    # -- SELECT, GET/PUT DATA ----------------------------------------------------------
    def select(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0x04 or not cmd.data or not PIV_AID.startswith(cmd.data[: len(PIV_AID)]):
            raise SWError(SW_NOT_FOUND, "unknown application")
        algs = b"".join(tlv(0x80, bytes([a])) for a in sorted(self.profile.algorithms))
        algs += tlv(0x80, bytes([P.ALG_3DES])) + tlv(0x80, bytes([P.ALG_AES128])) + tlv(0x06, b"\x00")
        apt = (
            tlv(0x4F, PIV_AID[5:])
            + tlv(0x79, tlv(0x4F, PIV_AID[:5]))
            + tlv(0x50, b"virtualcard PIV")
            + tlv(0xAC, algs)
        )
        return tlv(0x61, apt)

    @staticmethod
    def _object_tag(data: bytes) -> int:
        fields = tlv_dict(data)
        if 0x5C not in fields or not 1 <= len(fields[0x5C]) <= 3:
            raise SWError(SW_WRONG_DATA, "no tag list 5C")
        return int.from_bytes(fields[0x5C], "big")

    def get_data(self, cmd: CommandAPDU) -> bytes:
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF):
            raise SWError(SW_INCORRECT_P1P2)
        tag = self._object_tag(cmd.data)
        value = self.state.get_object(tag)
        if value is None:
            raise SWError(SW_NOT_FOUND, f"object {tag:X}")
        if tag == 0x7E:  # discovery object is its own template
            return tlv(0x7E, value)
        return tlv(0x53, value)

    def put_data(self, cmd: CommandAPDU) -> bytes:
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF):
            raise SWError(SW_INCORRECT_P1P2)
        self._need_mgmt()
        fields = tlv_dict(cmd.data)
        if 0x7E in fields:
            self.state.put_object(0x7E, fields[0x7E])
            return b""
        tag = self._object_tag(cmd.data)
        if 0x53 not in fields:
            raise SWError(SW_WRONG_DATA, "no 53 template")
        self.state.put_object(tag, fields[0x53])
        return b""

    # -- PIN and PUK -------------------------------------------------------------------
    def _check_reference(self, ref: int, offered: str) -> None:
        """Compare PIN or PUK, count down on mismatch, block at zero (SP 800-73-4 3.2.1)."""
        c = self.state.counters
        attr = "pin" if ref == PIN_REF else "puk"
        left = getattr(c, f"{attr}_tries_left")
        if left <= 0:
            raise SWError(SW_AUTH_BLOCKED, f"{attr} blocked")
        if not secrets.compare_digest(offered.encode(), getattr(c, attr).encode()):
            left -= 1
            setattr(c, f"{attr}_tries_left", left)
            self.state.save()
            if ref == PIN_REF:
                self.pin_verified = self.pin_fresh = False
            raise SWError(0x63C0 | left if left else SW_AUTH_BLOCKED, f"wrong {attr}")
        if left != getattr(c, f"{attr}_retries"):
            setattr(c, f"{attr}_tries_left", getattr(c, f"{attr}_retries"))
            self.state.save()

    def _check_pin_format(self, pin: str) -> None:
        if not self.profile.pin_min <= len(pin) <= self.profile.pin_max or not pin.isdigit():
            raise SWError(SW_WRONG_DATA, "PIN length/format outside the profile")

    def verify(self, cmd: CommandAPDU) -> bytes:
        if cmd.p2 != PIN_REF:
            raise SWError(SW_REF_NOT_FOUND, "only the card application PIN")
        if cmd.p1 == 0xFF:  # reset security status
            if cmd.data:
                raise SWError(SW_WRONG_LENGTH)
            self.pin_verified = self.pin_fresh = False
            return b""
        if cmd.p1 != 0x00:
            raise SWError(SW_INCORRECT_P1P2)
        c = self.state.counters
        if not cmd.data:  # status query
            if self.pin_verified:
                return b""
            if c.pin_tries_left <= 0:
                raise SWError(SW_AUTH_BLOCKED)
            raise SWError(0x63C0 | c.pin_tries_left)
        pin = _unpad_pin(cmd.data)
        self._check_reference(PIN_REF, pin)
        self.pin_verified = self.pin_fresh = True
        return b""

    def change_reference_data(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0 or cmd.p2 not in (PIN_REF, PUK_REF):
            raise SWError(SW_REF_NOT_FOUND)
        if len(cmd.data) != 16:
            raise SWError(SW_WRONG_DATA)
        old, new = _unpad_pin(cmd.data[:8]), _unpad_pin(cmd.data[8:])
        self._check_reference(cmd.p2, old)
        c = self.state.counters
        if cmd.p2 == PIN_REF:
            self._check_pin_format(new)
            c.pin = new
        else:
            if len(new) < 6:
                raise SWError(SW_WRONG_DATA, "PUK too short")
            c.puk = new
        self.state.save()
        return b""

    def reset_retry_counter(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0 or cmd.p2 != PIN_REF:
            raise SWError(SW_REF_NOT_FOUND)
        if len(cmd.data) != 16:
            raise SWError(SW_WRONG_DATA)
        puk, new = _unpad_pin(cmd.data[:8]), _unpad_pin(cmd.data[8:])
        self._check_reference(PUK_REF, puk)
        self._check_pin_format(new)
        c = self.state.counters
        c.pin = new
        c.pin_tries_left = c.pin_retries
        self.state.save()
        return b""

    # -- GENERAL AUTHENTICATE ----------------------------------------------------------
    def _key(self, slot: int) -> PrivateKey:
        if slot not in self._keys:
            key = self.state.get_key(slot)
            if key is None:
                raise SWError(SW_REF_NOT_FOUND, f"no key in slot {slot:02X}")
            self._keys[slot] = key
        return self._keys[slot]

    def general_authenticate(self, cmd: CommandAPDU) -> bytes:
        alg, ref = cmd.p1, cmd.p2
        fields = tlv_dict(cmd.data)
        if 0x7C in fields:
            fields = tlv_dict(fields[0x7C])
        else:
            raise SWError(SW_WRONG_DATA, "no 7C template")
        if ref == KEY_MGMT:
            return tlv(0x7C, self._mgmt_auth(alg, fields))
        if ref not in self.profile.slots:
            raise SWError(SW_REF_NOT_FOUND)
        key = self._key(ref)
        if alg != _alg_of(key):
            raise SWError(SW_INCORRECT_P1P2, "algorithm does not match the key")
        if ref != 0x9E:  # card authentication key needs no PIN
            if not self.pin_verified:
                raise SWError(SW_SECURITY_STATUS, "PIN not verified")
            if ref == 0x9C:
                if not self.pin_fresh:
                    raise SWError(SW_SECURITY_STATUS, "digital signature key: PIN always")
                self.pin_fresh = False
        if 0x81 in fields and fields.get(0x82) == b"":
            out = self._private_op(key, alg, fields[0x81])
        elif 0x85 in fields and fields.get(0x82) == b"":
            out = self._ecdh(key, alg, fields[0x85])
        else:
            raise SWError(SW_WRONG_DATA, "unsupported GENERAL AUTHENTICATE template")
        return tlv(0x7C, tlv(0x82, out))

    def _private_op(self, key: PrivateKey, alg: int, data: bytes) -> bytes:
        """ECDSA over a hash (DER out) or raw RSA (the host did the padding)."""
        start = time.monotonic()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            h = _PREHASH.get(len(data))
            if h is None:
                raise SWError(SW_WRONG_DATA, f"hash of {len(data)} bytes")
            out = key.sign(data, ec.ECDSA(utils.Prehashed(h)))
        else:
            n = key.private_numbers()
            k = (key.key_size + 7) // 8
            if len(data) != k:
                raise SWError(SW_WRONG_DATA, "RSA input must be modulus-sized")
            m = int.from_bytes(data, "big")
            if m >= n.public_numbers.n:
                raise SWError(SW_WRONG_DATA, "RSA input >= modulus")
            m1 = pow(m, n.dmp1, n.p)
            m2 = pow(m, n.dmq1, n.q)
            h2 = (n.iqmp * (m1 - m2)) % n.p
            out = (m2 + h2 * n.q).to_bytes(k, "big")
        self._delay(self.profile.sign_delay(alg), start)
        return out

    def _ecdh(self, key: PrivateKey, alg: int, point: bytes) -> bytes:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SWError(SW_INCORRECT_P1P2)
        start = time.monotonic()
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
        except ValueError:
            raise SWError(SW_WRONG_DATA, "bad EC point") from None
        out = key.exchange(ec.ECDH(), peer)
        self._delay(self.profile.sign_delay(alg), start)
        return out

    def _delay(self, seconds: float, start: float) -> None:
        remaining = seconds - (time.monotonic() - start)
        if remaining > 0:
            self._sleep(remaining)

    def _mgmt_auth(self, alg: int, fields: dict[int, bytes]) -> bytes:
        """Management-key challenge-response: card->host (81), mutual (80+81), host->card (82)."""
        c = self.state.counters
        key = bytes.fromhex(c.mgmt_key)
        bs = _block_size(c.mgmt_alg)
        if fields.get(0x81) == b"" and 0x80 not in fields:
            # host asks for a challenge (also OpenSC's C_GenerateRandom path)
            self._mgmt_challenge = secrets.token_bytes(bs)
            self._mgmt_witness = None
            return tlv(0x81, self._mgmt_challenge)
        if alg != c.mgmt_alg:
            raise SWError(SW_INCORRECT_P1P2, "management key algorithm mismatch")
        if fields.get(0x80) == b"":
            # mutual authentication step 1: card sends an encrypted witness
            self._mgmt_witness = secrets.token_bytes(bs)
            self._mgmt_challenge = None
            enc = _cipher(alg, key).encryptor()
            return tlv(0x80, enc.update(self._mgmt_witness) + enc.finalize())
        if fields.get(0x80) and fields.get(0x81):  # 82 00 is optional (yubico-piv-tool omits it)
            witness, self._mgmt_witness = self._mgmt_witness, None
            if witness is None or not secrets.compare_digest(witness, fields[0x80]):
                self.mgmt_authenticated = False
                raise SWError(SW_SECURITY_STATUS, "wrong witness")
            self.mgmt_authenticated = True
            enc = _cipher(alg, key).encryptor()
            return tlv(0x82, enc.update(fields[0x81]) + enc.finalize())
        if 0x82 in fields and fields[0x82]:
            challenge, self._mgmt_challenge = self._mgmt_challenge, None
            enc = _cipher(alg, key).encryptor()
            if challenge is None or not secrets.compare_digest(
                enc.update(challenge) + enc.finalize(), fields[0x82]
            ):
                self.mgmt_authenticated = False
                raise SWError(SW_SECURITY_STATUS, "wrong response")
            self.mgmt_authenticated = True
            return b""
        raise SWError(SW_WRONG_DATA, "unsupported management key template")

    # -- key generation and import -----------------------------------------------------
    def _check_slot_alg(self, slot: int, alg: int) -> None:
        if slot not in self.profile.slots or slot == KEY_MGMT:
            raise SWError(SW_INCORRECT_P1P2, f"slot {slot:02X} not on this card")
        if alg not in self.profile.algorithms:
            raise SWError(SW_INCORRECT_P1P2, f"algorithm {alg:02X} not on this card")

    def generate_key_pair(self, cmd: CommandAPDU) -> bytes:
        self._need_mgmt()
        slot = cmd.p2
        fields = tlv_dict(cmd.data)
        params = tlv_dict(fields.get(0xAC, b""))
        if len(params.get(0x80, b"")) != 1:
            raise SWError(SW_WRONG_DATA, "no algorithm")
        alg = params[0x80][0]
        self._check_slot_alg(slot, alg)
        start = time.monotonic()
        key: PrivateKey
        if alg in P.EC_CURVES:
            key = ec.generate_private_key(ec.SECP256R1() if alg == P.ALG_ECCP256 else ec.SECP384R1())
            pub = key.public_key().public_bytes(
                encoding=_ser.Encoding.X962, format=_ser.PublicFormat.UncompressedPoint
            )
            body = tlv(0x86, pub)
        else:
            key = rsa.generate_private_key(65537, P.RSA_BITS[alg])
            pn = key.public_key().public_numbers()
            body = tlv(0x81, pn.n.to_bytes((pn.n.bit_length() + 7) // 8, "big")) + tlv(0x82, b"\x01\x00\x01")
        self.state.put_key(slot, key)
        self._keys[slot] = key
        self._delay(self.profile.keygen_delay(alg), start)
        return tlv(0x7F49, body)

    def yk_import_key(self, cmd: CommandAPDU) -> bytes:
        """Yubico IMPORT ASYMMETRIC KEY (INS FE, P1 alg, P2 slot)."""
        self._need_mgmt()
        alg, slot = cmd.p1, cmd.p2
        self._check_slot_alg(slot, alg)
        f = tlv_dict(cmd.data)
        key: PrivateKey
        try:
            if alg in P.EC_CURVES:
                curve = ec.SECP256R1() if alg == P.ALG_ECCP256 else ec.SECP384R1()
                key = ec.derive_private_key(int.from_bytes(f[0x06], "big"), curve)
            else:
                p, q = (int.from_bytes(f[t], "big") for t in (0x01, 0x02))
                e = 65537
                d = pow(e, -1, (p - 1) * (q - 1))
                key = rsa.RSAPrivateNumbers(
                    p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
                ).private_key()
        except (KeyError, ValueError):
            raise SWError(SW_WRONG_DATA, "bad key components") from None
        self.state.put_key(slot, key)
        self._keys[slot] = key
        return b""

    def yk_set_management_key(self, cmd: CommandAPDU) -> bytes:
        """Yubico SET MANAGEMENT KEY (INS FF FF FF|FE): data = alg 9B len key."""
        self._need_mgmt()
        d = cmd.data
        if len(d) < 3 or d[1] != KEY_MGMT or d[2] != len(d) - 3:
            raise SWError(SW_WRONG_DATA)
        alg, key = d[0], d[3:]
        if P.SYMMETRIC_KEY_LEN.get(alg) != len(key):
            raise SWError(SW_WRONG_DATA, "key length does not fit the algorithm")
        c = self.state.counters
        c.mgmt_alg, c.mgmt_key = alg, key.hex()
        self.state.save()
        return b""

    def yk_reset(self, cmd: CommandAPDU) -> bytes:
        """Yubico RESET: only when PIN and PUK are both blocked; wipes keys and certificates."""
        c = self.state.counters
        if c.pin_tries_left > 0 or c.puk_tries_left > 0:
            raise SWError(SW_CONDITIONS, "PIN and PUK must be blocked")
        for slot in self.state.slots_with_keys():
            (self.state.dir / "keys" / f"{slot:02x}.pem").unlink()
        for tag in CERT_TAGS.values():
            self.state.put_object(tag, b"")
        c.pin, c.puk = DEFAULT_PIN, DEFAULT_PUK
        c.pin_tries_left, c.puk_tries_left = c.pin_retries, c.puk_retries
        c.mgmt_alg, c.mgmt_key = P.ALG_3DES, DEFAULT_MGMT_KEY.hex()
        self.state.save()
        self._keys.clear()
        self.reset()
        return b""
