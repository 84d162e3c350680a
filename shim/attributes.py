"""The one table of attribute types: how a value decodes, how the audit log shows it, whether
it is secret.  Summaries, shim objects, verification and derived public keys all read it.

Values are kept as PKCS#11 hands them over (bytes, native byte order); the
shim is built for LP64 Linux, where CK_ULONG is 8 bytes little-endian.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shim.constants import CKA, CKK, CKM, CKO, name_of

ULONG_SIZE = 8
TRUE, FALSE = b"\x01", b"\x00"


def ulong(v: bytes | None) -> int | None:
    """The CK_ULONG in ``v``; None when absent or not an integer's size."""
    return int.from_bytes(v, "little") if v is not None and len(v) in (1, 2, 4, 8) else None


def encode_ulong(v: int) -> bytes:
    return int(v).to_bytes(ULONG_SIZE, "little")


def boolean(v: bytes | None, default: bool) -> bool:
    return default if not v else v[0] != 0


def name(atype: int) -> str:
    """``CKA_LABEL``-style name, or the hex number of a vendor/unknown type."""
    return name_of(CKA, atype)


@dataclass(frozen=True)
class Codec:
    decode: Callable[[bytes], Any]
    show: Callable[[Any], Any] | None = None  # the decoded value as the audit log shows it; None: length only
    secret: bool = False  # key material: never shown, never imported into the shim


def _ulong_or_invalid(v: bytes) -> int:
    n = ulong(v)
    return -1 if n is None else n


def _flag(v: bytes) -> bool | None:
    return bool(v[0]) if len(v) == 1 else None  # None: not a CK_BBOOL, shown by length


_RAW = Codec(bytes)
_ULONG = Codec(_ulong_or_invalid, show=lambda n: n)
_BOOL = Codec(_flag, show=lambda b: b)
_HEX = Codec(bytes, show=bytes.hex)
_SECRET = Codec(bytes, secret=True)


def _named(enum_cls: Any) -> Codec:
    return Codec(_ulong_or_invalid, show=lambda n: name_of(enum_cls, n))


ATTRIBUTES: dict[int, Codec] = {
    CKA.CLASS: _named(CKO),
    CKA.KEY_TYPE: _named(CKK),
    CKA.KEY_GEN_MECHANISM: _named(CKM),
    CKA.LABEL: Codec(bytes, show=lambda v: v.decode("utf-8", "replace")),
    CKA.ID: _HEX,
    CKA.EC_PARAMS: _HEX,
    CKA.PUBLIC_EXPONENT: _HEX,
    CKA.MODULUS_BITS: _ULONG,
    CKA.VALUE_LEN: _ULONG,
    CKA.EC_POINT: _RAW,
    CKA.MODULUS: _RAW,
    **{t: _BOOL for t in (
        CKA.TOKEN, CKA.PRIVATE, CKA.MODIFIABLE, CKA.SENSITIVE, CKA.EXTRACTABLE, CKA.SIGN, CKA.VERIFY,
        CKA.ENCRYPT, CKA.DECRYPT, CKA.WRAP, CKA.UNWRAP, CKA.DERIVE, CKA.COPYABLE, CKA.DESTROYABLE,
        CKA.ALWAYS_AUTHENTICATE, CKA.LOCAL, CKA.ALWAYS_SENSITIVE, CKA.NEVER_EXTRACTABLE, CKA.SIGN_RECOVER,
        CKA.VERIFY_RECOVER, CKA.TRUSTED)},
    **{t: _SECRET for t in (
        CKA.VALUE, CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.PRIME_2, CKA.EXPONENT_1, CKA.EXPONENT_2,
        CKA.COEFFICIENT)},
}
SECRET = frozenset(t for t, c in ATTRIBUTES.items() if c.secret)


def shown(atype: int) -> bool:
    """Whether the audit log may show this attribute's value (else only its length)."""
    codec = ATTRIBUTES.get(atype, _RAW)
    return codec.show is not None and not codec.secret


def summarise(atype: int, value: bytes | None) -> tuple[str, Any]:
    """(name, what the audit log shows): a non-secret value the table can show, else its length."""
    key = name(atype)
    if value is None:
        return key, None
    codec = ATTRIBUTES.get(atype, _RAW)
    if codec.show is not None:
        decoded = codec.decode(value)
        if decoded is not None:
            return key, codec.show(decoded)
    return key, f"<{len(value)} bytes>"
