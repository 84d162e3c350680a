"""Attribute and placeholder values: audit-record notation <-> bytes.

The audit summary prints CKA_CLASS/KEY_TYPE/KEY_GEN_MECHANISM by name, CKA_LABEL as text, ID,
EC_PARAMS and PUBLIC_EXPONENT as hex, MODULUS_BITS/VALUE_LEN as numbers, booleans as JSON
booleans and everything else as ``<N bytes>``; this module reads that notation back.
"""

from __future__ import annotations

import re
from typing import Any

from sc4testkit import ulong
from shim.constants import CKA, CKK, CKM, CKO, CKR, CKU

ULONG_ATTRS = {CKA.CLASS, CKA.KEY_TYPE, CKA.MODULUS_BITS, CKA.VALUE_LEN, CKA.KEY_GEN_MECHANISM,
               CKA.CERTIFICATE_TYPE}
HEX_ATTRS = {CKA.ID, CKA.EC_PARAMS, CKA.PUBLIC_EXPONENT}
_SIZED = re.compile(r"^<(\d+) bytes>$")
_PLACEHOLDER = re.compile(r"^\$\{([a-z0-9_.]+)\}$")
_ENUMS = {"CKA": CKA, "CKK": CKK, "CKM": CKM, "CKO": CKO, "CKR": CKR, "CKU": CKU}


def const(name: str | int) -> int:
    """``CKM_ECDSA`` -> 0x1041 via the shim's one constants table (ints pass through)."""
    if isinstance(name, int):
        return name
    if name.startswith("0x"):
        return int(name, 16)
    prefix, _, rest = name.partition("_")
    enum = _ENUMS[prefix]
    if rest.startswith("0x"):
        return int(rest, 16)
    return int(enum[rest])


def placeholder(value: Any) -> str | None:
    if isinstance(value, str):
        m = _PLACEHOLDER.match(value)
        if m:
            return m.group(1)
    return None


def sized(value: Any) -> int | None:
    if isinstance(value, str):
        m = _SIZED.match(value)
        if m:
            return int(m.group(1))
    return None


def encode_attr(atype: int, value: Any, bindings: dict[str, Any]) -> bytes | None:
    """Bytes for a template entry; ``None`` = no value (a size query)."""
    if value is None:
        return None
    name = placeholder(value)
    if name is not None:
        bound = bindings[name]
        if isinstance(bound, str):  # labels are text, everything else (ids, points, digests) hex
            return bound.encode() if name.endswith("label") else bytes.fromhex(bound)
        return encode_attr(atype, bound, bindings)
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return ulong.encode(value)
    n = sized(value)
    if n is not None:
        return bytes(n)
    assert isinstance(value, str), value
    if value.startswith("hex:"):
        return bytes.fromhex(value[4:])
    if atype in ULONG_ATTRS:
        return ulong.encode(const(value))
    if atype in HEX_ATTRS:
        return bytes.fromhex(value)
    return value.encode()
