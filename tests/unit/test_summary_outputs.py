"""Outputs are summarised after the call, from what the callee wrote only.

A C host may hand C_GetAttributeValue a buffer that still holds the PIN it just
used; PyKCS11 always passes zeroed buffers, so these tests pass raw cffi memory
pre-filled with a canary, as such a host would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unit_stack import FFI, Stack, add_ec_private_key, add_object, ulong

from shim import cabi
from shim.constants import CK_UNAVAILABLE_INFORMATION, CKA, CKO, CKR, SessionFlag
from shim.summary import MAX_SHOWN

PIN = b"PinCanary-4711"


def _last_call(log: Path) -> dict[str, Any]:
    return [json.loads(x) for x in log.read_text().splitlines() if '"kind":"call"' in x][-1]


def _open(stack: Stack) -> int:
    assert stack.entries["C_Initialize"](cabi.NULL) == CKR.OK
    h = FFI.new("CK_SESSION_HANDLE *")
    assert stack.entries["C_OpenSession"](1, SessionFlag.SERIAL_SESSION, cabi.NULL, cabi.NULL, h) == CKR.OK
    return int(h[0])


def _template(*types: int, size: int = 64, fill: bytes = PIN) -> tuple[Any, list[Any]]:
    tmpl = FFI.new("CK_ATTRIBUTE[]", len(types))
    bufs = []
    for i, t in enumerate(types):
        buf = FFI.new("CK_BYTE[]", (fill * (size // len(fill) + 1))[:size])
        bufs.append(buf)
        tmpl[i].type, tmpl[i].pValue, tmpl[i].ulValueLen = t, buf, size
    return tmpl, bufs


def test_a_reused_buffer_holding_the_pin_never_reaches_the_record(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64), label=b"ksk")
    tmpl, _bufs = _template(CKA.LABEL, CKA.CLASS)
    assert stack.entries["C_GetAttributeValue"](h, key, tmpl, 2) == CKR.OK
    assert PIN not in stack.log.read_bytes()
    rec = _last_call(stack.log)["args"]
    assert rec["template"] == {"CKA_LABEL": "ksk", "CKA_CLASS": "CKO_PRIVATE_KEY"}  # the card's values
    assert rec["types"] == ["CKA_LABEL", "CKA_CLASS"]


def test_after_a_failed_call_no_value_is_read(stack: Stack, card: Any) -> None:
    h = _open(stack)
    tmpl, _bufs = _template(CKA.LABEL)
    assert stack.entries["C_GetAttributeValue"](h, 0xDEAD, tmpl, 1) == CKR.OBJECT_HANDLE_INVALID
    assert PIN not in stack.log.read_bytes()
    assert _last_call(stack.log)["args"]["template"] == {"CKA_LABEL": None}


def test_an_unavailable_attribute_is_not_read(stack: Stack, card: Any) -> None:
    h = _open(stack)
    obj = add_object(card, {CKA.CLASS: ulong(CKO.DATA), CKA.LABEL: b"x" * 100})
    tmpl, _bufs = _template(CKA.LABEL, CKA.CLASS, size=16)  # too small for the label
    rv = stack.entries["C_GetAttributeValue"](h, obj, tmpl, 2)
    assert rv == CKR.BUFFER_TOO_SMALL and tmpl[0].ulValueLen == CK_UNAVAILABLE_INFORMATION
    assert PIN not in stack.log.read_bytes()
    assert _last_call(stack.log)["args"]["template"] == {"CKA_LABEL": "<unavailable>", "CKA_CLASS": "CKO_DATA"}


def test_a_shown_value_is_capped(stack: Stack, card: Any) -> None:
    h = _open(stack)
    big = b"L" * (MAX_SHOWN + 1)
    tmpl = FFI.new("CK_ATTRIBUTE[]", 1)
    buf = FFI.new("CK_BYTE[]", big)
    tmpl[0].type, tmpl[0].pValue, tmpl[0].ulValueLen = CKA.LABEL, buf, len(big)
    stack.entries["C_FindObjectsInit"](h, tmpl, 1)
    assert _last_call(stack.log)["args"]["template"] == {"CKA_LABEL": f"<{len(big)} bytes>"}
    assert b"L" * 64 not in stack.log.read_bytes()


def test_a_secret_value_is_never_shown(stack: Stack, card: Any) -> None:
    h = _open(stack)
    secret = b"KeyCanary-0042"
    obj = add_object(card, {CKA.CLASS: ulong(CKO.SECRET_KEY), CKA.VALUE: secret})
    tmpl, _bufs = _template(CKA.VALUE, size=len(secret))
    assert stack.entries["C_GetAttributeValue"](h, obj, tmpl, 1) == CKR.OK
    assert bytes(FFI.buffer(tmpl[0].pValue, tmpl[0].ulValueLen)) == secret  # the host got it...
    assert secret not in stack.log.read_bytes()  # ...the record did not
    assert _last_call(stack.log)["args"]["template"]["CKA_VALUE"] in (f"<{len(secret)} bytes>", "<redacted>")
