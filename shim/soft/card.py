"""Reading the card's objects through the backend (for verification, copies, derived keys)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shim import cabi
from shim.constants import CK_UNAVAILABLE_INFORMATION, CKR
from shim.errors import PKCS11Error
from shim.marshal import write_attributes

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


# When several attributes of one C_GetAttributeValue fail, v2.40 (5.7) lets the call return any of
# their errors; these come last, in this order, after any other error.
_ATTRIBUTE_ERRORS = (CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID, CKR.BUFFER_TOO_SMALL)


def _ask(fn: Fn, session: int, handle: int, tmpl: Any, indexes: list[int]) -> int:
    """C_GetAttributeValue on the entries ``indexes`` of the caller's template (same buffers)."""
    sub = cabi.ffi.new("CK_ATTRIBUTE[]", len(indexes))
    for j, i in enumerate(indexes):
        sub[j].type, sub[j].pValue, sub[j].ulValueLen = tmpl[i].type, tmpl[i].pValue, tmpl[i].ulValueLen
    rv = int(fn["C_GetAttributeValue"](session, handle, sub, len(indexes)))
    for j, i in enumerate(indexes):
        tmpl[i].ulValueLen = sub[j].ulValueLen
    return rv


def _combined(rvs: Iterable[int]) -> int:
    failed = {rv for rv in rvs if rv != CKR.OK}
    others = sorted(failed - set(_ATTRIBUTE_ERRORS))
    if others:
        return others[0]
    return next((rv for rv in _ATTRIBUTE_ERRORS if rv in failed), CKR.OK)


def answer_unknown(fn: Fn, session: int, handle: int, tmpl: Any, count: int, lengths: list[int],
                   answers: Mapping[int, Callable[[], bytes]]) -> tuple[int, list[int]]:
    """Complete a C_GetAttributeValue the card answered CKR_ATTRIBUTE_TYPE_INVALID.

    ``lengths`` are the caller's ulValueLen values before the card's call overwrote them; the
    entries whose type ``answers`` names are asked of the card one at a time, and each the card
    does not know gets the answer's value (with the size-query / short-buffer protocol); the
    other entries are asked together.  A card need not say which entry was invalid
    (CK_UNAVAILABLE_INFORMATION marks any failure), hence the separate calls, which this error
    path alone pays.  Returns the call's CKR and the types the shim answered."""
    for i in range(count):
        tmpl[i].ulValueLen = lengths[i]
    mine = [i for i in range(count) if int(tmpl[i].type) in answers]
    rest = [i for i in range(count) if int(tmpl[i].type) not in answers]
    rvs = [_ask(fn, session, handle, tmpl, rest)] if rest else []
    answered: list[int] = []
    for i in mine:
        # a lone entry: the card's first answer was already about it alone
        rv = CKR.ATTRIBUTE_TYPE_INVALID if count == 1 else _ask(fn, session, handle, tmpl, [i])
        if rv == CKR.ATTRIBUTE_TYPE_INVALID:
            atype = int(tmpl[i].type)
            tmpl[i].ulValueLen = lengths[i]
            rv = write_attributes(tmpl + i, 1, {atype: answers[atype]()})
            answered.append(atype)
        rvs.append(rv)
    return _combined(rvs), answered


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
