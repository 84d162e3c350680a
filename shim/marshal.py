"""Reading PKCS#11 arguments from C memory and writing results back.

Every output buffer goes through :func:`write_output`, so the size-query /
value protocol is the same everywhere: a NULL buffer asks for the length, a
short buffer gets CKR_BUFFER_TOO_SMALL *and* the needed length, and the length
reported by a query is exactly what the following call writes (BIND 9.16
segfaults when the two disagree).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shim import cabi
from shim.constants import CKR
from shim.errors import PKCS11Error

CData = Any  # cffi pointers have no static type


class Attribute(NamedTuple):
    type: int
    value: bytes | None  # None when the caller passed a NULL pValue


class Mechanism(NamedTuple):
    type: int
    parameter: bytes


def read_bytes(ptr: CData, length: int) -> bytes:
    if length == 0:
        return b""
    if ptr == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL data pointer with a non-zero length")
    return cabi.ffi.buffer(ptr, length)[:]


def read_template(ptr: CData, count: int) -> list[Attribute]:
    if count == 0:
        return []
    if ptr == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL template with a non-zero count")
    attrs = []
    for i in range(count):
        a = ptr[i]
        if a.pValue == cabi.NULL:
            attrs.append(Attribute(int(a.type), None))
        else:
            attrs.append(Attribute(int(a.type), cabi.ffi.buffer(a.pValue, a.ulValueLen)[:]))
    return attrs


def read_mechanism(ptr: CData, *, takes_parameter: bool = True) -> Mechanism:
    """A mechanism that takes no parameter (``takes_parameter`` from ``shim.spec.TAKES_PARAMETER``)
    ignores whatever the caller passed: PowerDNS hands C_DigestInit(CKM_SHA_1) an uninitialised
    pParameter/len."""
    if ptr == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL mechanism")
    mtype = int(ptr.mechanism)
    if not takes_parameter or ptr.pParameter == cabi.NULL or ptr.ulParameterLen == 0:
        return Mechanism(mtype, b"")
    if ptr.ulParameterLen > 4096:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "mechanism parameter too long")
    return Mechanism(mtype, cabi.ffi.buffer(ptr.pParameter, ptr.ulParameterLen)[:])


def write_output(buf: CData, plen: CData, data: bytes) -> int:
    if plen == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL length pointer")
    needed = len(data)
    if buf == cabi.NULL:
        plen[0] = needed
        return CKR.OK
    if plen[0] < needed:
        plen[0] = needed
        return CKR.BUFFER_TOO_SMALL
    cabi.ffi.memmove(buf, data, needed)
    plen[0] = needed
    return CKR.OK


def fill_text(field: CData, text: str) -> None:
    """Blank-padded, not NUL-terminated: PKCS#11's fixed-width string fields."""
    raw = text.encode()[: len(field)]
    cabi.ffi.memmove(field, raw.ljust(len(field), b" "), len(field))


def write_attributes(ptr: CData, count: int, values: dict[int, bytes | None]) -> int:
    """C_GetAttributeValue semantics over ``values`` (None = sensitive).

    Returns the CKR for the whole call; per attribute, ulValueLen is set to the
    length, or CK_UNAVAILABLE_INFORMATION for missing/sensitive/too-small ones."""
    from shim.constants import CK_UNAVAILABLE_INFORMATION

    rv = CKR.OK
    if count and ptr == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL template with a non-zero count")
    for i in range(count):
        a = ptr[i]
        atype = int(a.type)
        if atype not in values:
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION
            rv = rv if rv != CKR.OK else CKR.ATTRIBUTE_TYPE_INVALID
            continue
        value = values[atype]
        if value is None:
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION
            if rv == CKR.OK:
                rv = CKR.ATTRIBUTE_SENSITIVE
            continue
        if a.pValue == cabi.NULL:
            a.ulValueLen = len(value)
        elif a.ulValueLen < len(value):
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION
            if rv == CKR.OK:
                rv = CKR.BUFFER_TOO_SMALL
        else:
            cabi.ffi.memmove(a.pValue, value, len(value))
            a.ulValueLen = len(value)
    return rv
