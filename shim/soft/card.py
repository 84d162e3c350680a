"""Reading the card's objects through the backend (for verification, copies, derived keys)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shim import cabi
from shim.constants import CK_UNAVAILABLE_INFORMATION, CKR
from shim.errors import PKCS11Error

Fn = Mapping[str, Callable[..., int]]


def read_attributes(fn: Fn, session: int, handle: int, types: Iterable[int]) -> dict[int, bytes]:
    """The readable ones of ``types``: one size query, one value call (2 round trips)."""
    types = list(types)
    tmpl = cabi.ffi.new("CK_ATTRIBUTE[]", len(types))
    for i, t in enumerate(types):
        tmpl[i].type = t
        tmpl[i].pValue = cabi.ffi.NULL
        tmpl[i].ulValueLen = 0
    rv = fn["C_GetAttributeValue"](session, handle, tmpl, len(types))
    if rv in (CKR.OBJECT_HANDLE_INVALID, CKR.SESSION_HANDLE_INVALID, CKR.DEVICE_REMOVED):
        raise PKCS11Error(rv, "card object not readable")
    wanted = [(t, int(tmpl[i].ulValueLen)) for i, t in enumerate(types)
              if int(tmpl[i].ulValueLen) != CK_UNAVAILABLE_INFORMATION]
    if not wanted:
        return {}
    tmpl = cabi.ffi.new("CK_ATTRIBUTE[]", len(wanted))
    bufs: list[Any] = []
    for i, (t, n) in enumerate(wanted):
        buf = cabi.ffi.new("CK_BYTE[]", max(n, 1))
        bufs.append(buf)
        tmpl[i].type, tmpl[i].pValue, tmpl[i].ulValueLen = t, buf, n
    rv = fn["C_GetAttributeValue"](session, handle, tmpl, len(wanted))
    out: dict[int, bytes] = {}
    for i, (t, _) in enumerate(wanted):
        n = int(tmpl[i].ulValueLen)
        if n != CK_UNAVAILABLE_INFORMATION:
            out[t] = cabi.ffi.buffer(bufs[i], n)[:]
    if rv not in (CKR.OK, CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID) and not out:
        raise PKCS11Error(rv, "card object attributes not readable")
    return out


def find(fn: Fn, session: int, template: dict[int, bytes]) -> list[int]:
    """All card objects matching ``template`` (the session must have no search active)."""
    tmpl = cabi.ffi.new("CK_ATTRIBUTE[]", max(len(template), 1))
    keep = []
    for i, (t, v) in enumerate(template.items()):
        buf = cabi.ffi.new("CK_BYTE[]", v)
        keep.append(buf)
        tmpl[i].type, tmpl[i].pValue, tmpl[i].ulValueLen = t, buf, len(v)
    rv = fn["C_FindObjectsInit"](session, tmpl, len(template))
    if rv != CKR.OK:
        raise PKCS11Error(rv, "card search failed")
    found: list[int] = []
    handles = cabi.ffi.new("CK_OBJECT_HANDLE[]", 64)
    count = cabi.ffi.new("CK_ULONG *")
    try:
        while True:
            rv = fn["C_FindObjects"](session, handles, 64, count)
            if rv != CKR.OK or count[0] == 0:
                break
            found += [int(handles[i]) for i in range(int(count[0]))]
    finally:
        fn["C_FindObjectsFinal"](session)
    return found
