"""Command/response APDUs (ISO 7816-4) and BER-TLV helpers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


class SWError(Exception):
    """A command failed with a status word; the dispatcher turns it into the response."""

    def __init__(self, sw: int, why: str = "") -> None:
        super().__init__(f"SW {sw:04X} {why}".strip())
        self.sw = sw


# Status words used by the PIV application.
SW_OK = 0x9000
SW_WRONG_LENGTH = 0x6700
SW_SECURITY_STATUS = 0x6982
SW_AUTH_BLOCKED = 0x6983
SW_CONDITIONS = 0x6985
SW_WRONG_DATA = 0x6A80
SW_FUNC_NOT_SUPPORTED = 0x6A81
SW_NOT_FOUND = 0x6A82
SW_NOT_ENOUGH_MEMORY = 0x6A84
SW_INCORRECT_P1P2 = 0x6A86
SW_REF_NOT_FOUND = 0x6A88
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00


@dataclass(frozen=True)
class CommandAPDU:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None  # None: no Le; 0 is never stored (it means 256 or 65536)
    extended: bool

    @property
    def chained(self) -> bool:
        """CLA bit 0x10: more command data follows in the next APDU."""
        return bool(self.cla & 0x10)

    @classmethod
    def parse(cls, raw: bytes) -> CommandAPDU:
        """Parse cases 1-4, short and extended encodings."""
        if len(raw) < 4:
            raise SWError(SW_WRONG_LENGTH, "APDU shorter than 4 bytes")
        cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2, b"", None, False)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, b"", body[0] or 256, False)
        if body[0] != 0:
            lc = body[0]
            data = body[1 : 1 + lc]
            if len(data) != lc:
                raise SWError(SW_WRONG_LENGTH, "Lc larger than data")
            rest = body[1 + lc :]
            if not rest:
                return cls(cla, ins, p1, p2, data, None, False)
            if len(rest) == 1:
                return cls(cla, ins, p1, p2, data, rest[0] or 256, False)
            raise SWError(SW_WRONG_LENGTH, "trailing bytes after Le")
        # extended: 00 then 2-byte Lc or 2-byte Le
        if len(body) == 3:
            le = int.from_bytes(body[1:3], "big") or 65536
            return cls(cla, ins, p1, p2, b"", le, True)
        lc = int.from_bytes(body[1:3], "big")
        data = body[3 : 3 + lc]
        if len(data) != lc:
            raise SWError(SW_WRONG_LENGTH, "extended Lc larger than data")
        rest = body[3 + lc :]
        if not rest:
            return cls(cla, ins, p1, p2, data, None, True)
        if len(rest) == 2:
            return cls(cla, ins, p1, p2, data, int.from_bytes(rest, "big") or 65536, True)
        raise SWError(SW_WRONG_LENGTH, "bad extended Le")


def encode_length(n: int) -> bytes:
    """BER definite length."""
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return bytes([0x81, n])
    if n <= 0xFFFF:
        return bytes([0x82]) + n.to_bytes(2, "big")
    return bytes([0x83]) + n.to_bytes(3, "big")


def tlv(tag: int, value: bytes) -> bytes:
    """Encode one TLV; tags up to 3 bytes (0x5FC105, 0x7F49)."""
    tag_bytes = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    return tag_bytes + encode_length(len(value)) + value


def parse_tlv(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (tag, value) for a sequence of BER-TLVs (multi-byte tags, definite lengths)."""
    i = 0
    while i < len(data):
        if data[i] in (0x00, 0xFF):  # padding between TLVs
            i += 1
            continue
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:
            while True:
                if i >= len(data):
                    raise SWError(SW_WRONG_DATA, "truncated tag")
                tag = (tag << 8) | data[i]
                i += 1
                if not data[i - 1] & 0x80:
                    break
        if i >= len(data):
            raise SWError(SW_WRONG_DATA, "missing length")
        length = data[i]
        i += 1
        if length & 0x80:
            nbytes = length & 0x7F
            if nbytes == 0 or nbytes > 3 or i + nbytes > len(data):
                raise SWError(SW_WRONG_DATA, "bad length")
            length = int.from_bytes(data[i : i + nbytes], "big")
            i += nbytes
        if i + length > len(data):
            raise SWError(SW_WRONG_DATA, "value runs past the end")
        yield tag, data[i : i + length]
        i += length


def tlv_dict(data: bytes) -> dict[int, bytes]:
    """First value per tag; enough for PIV templates, which never repeat a tag."""
    out: dict[int, bytes] = {}
    for tag, value in parse_tlv(data):
        out.setdefault(tag, value)
    return out
