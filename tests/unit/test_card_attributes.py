"""v2.40 storage attributes a card's module does not know, answered by the completion layer.

The fake card knows only the attributes a test gives an object (every other one is
CKR_ATTRIBUTE_TYPE_INVALID, with CK_UNAVAILABLE_INFORMATION in its entry), as OpenSC 0.23 knows
no CKA_COPYABLE.  The template is the one pkcs11-provider (BIND 9.20) sends for every key it loads.
"""

from __future__ import annotations

import json
from typing import Any

from unit_stack import FFI, Stack, add_ec_private_key, add_object, ulong

from shim import cabi
from shim.constants import CK_UNAVAILABLE_INFORMATION, CKA, CKK, CKO, CKR, SessionFlag
from shim.handlers.objects import CARD_ATTRIBUTE_ANSWERS
from shim.spec import V240_STORAGE_ATTRIBUTES

PROVIDER_TEMPLATE = (CKA.CLASS, CKA.KEY_TYPE, CKA.COPYABLE, CKA.TOKEN)


def _open(stack: Stack) -> int:
    assert stack.entries["C_Initialize"](cabi.NULL) == CKR.OK
    h = FFI.new("CK_SESSION_HANDLE *")
    assert stack.entries["C_OpenSession"](1, SessionFlag.SERIAL_SESSION, cabi.NULL, cabi.NULL, h) == CKR.OK
    return int(h[0])


def _query(types: tuple[int, ...], size: int | None = 8) -> tuple[Any, list[Any]]:
    """A template of ``types`` with ``size``-byte buffers (None: NULL pValue, a size query)."""
    t = FFI.new("CK_ATTRIBUTE[]", len(types))
    keep = []
    for i, a in enumerate(types):
        t[i].type = a
        if size is None:
            t[i].pValue, t[i].ulValueLen = cabi.NULL, 0
        else:
            buf = FFI.new("CK_BYTE[]", max(size, 1))
            keep.append(buf)
            t[i].pValue, t[i].ulValueLen = buf, size
    return t, keep


def _value(t: Any, i: int) -> bytes:
    return bytes(FFI.buffer(t[i].pValue, t[i].ulValueLen))


def _public_key(card: Any, extra: dict[int, bytes] | None = None) -> int:
    return add_object(card, {CKA.CLASS: ulong(CKO.PUBLIC_KEY), CKA.KEY_TYPE: ulong(CKK.EC), CKA.TOKEN: b"\x01",
                             CKA.ID: b"\x01", **(extra or {})})


def _last_call(stack: Stack) -> dict[str, Any]:
    return [json.loads(x) for x in stack.log.read_text().splitlines()][-1]  # type: ignore[no-any-return]


def test_only_v240_storage_attributes_are_answered() -> None:
    assert CARD_ATTRIBUTE_ANSWERS.keys() <= V240_STORAGE_ATTRIBUTES


def test_a_card_private_key_is_not_copyable_and_the_rest_of_the_template_is_the_cards(stack: Stack,
                                                                                        card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    card.fake_set_attr(key, CKA.TOKEN, b"\x01", 1)
    t, keep = _query(PROVIDER_TEMPLATE)
    assert stack.entries["C_GetAttributeValue"](h, key, t, 4) == CKR.OK
    assert _value(t, 0) == ulong(CKO.PRIVATE_KEY) and _value(t, 1) == ulong(CKK.EC)
    assert _value(t, 2) == b"\x00" and _value(t, 3) == b"\x01"
    assert _last_call(stack)["args"]["shim_answered"] == ["CKA_COPYABLE"]


def test_a_card_public_key_is_copyable_and_a_size_query_gets_one_byte(stack: Stack, card: Any) -> None:
    h = _open(stack)
    pub = _public_key(card)
    t, _ = _query((CKA.COPYABLE,), size=None)
    assert stack.entries["C_GetAttributeValue"](h, pub, t, 1) == CKR.OK
    assert t[0].ulValueLen == 1
    t, keep = _query((CKA.COPYABLE,), size=1)
    assert stack.entries["C_GetAttributeValue"](h, pub, t, 1) == CKR.OK
    assert _value(t, 0) == b"\x01"  # the shim copies card public keys (C_CopyObject)


def test_a_short_buffer_for_the_answered_attribute_is_buffer_too_small(stack: Stack, card: Any) -> None:
    h = _open(stack)
    pub = _public_key(card)
    t, keep = _query((CKA.CLASS, CKA.COPYABLE), size=8)
    t[1].ulValueLen = 0
    assert stack.entries["C_GetAttributeValue"](h, pub, t, 2) == CKR.BUFFER_TOO_SMALL
    assert _value(t, 0) == ulong(CKO.PUBLIC_KEY)
    assert t[1].ulValueLen == CK_UNAVAILABLE_INFORMATION


def test_another_unknown_attribute_stays_invalid(stack: Stack, card: Any) -> None:
    h = _open(stack)
    pub = _public_key(card)
    t, keep = _query((CKA.COPYABLE, CKA.ALLOWED_MECHANISMS, CKA.ID), size=8)
    assert stack.entries["C_GetAttributeValue"](h, pub, t, 3) == CKR.ATTRIBUTE_TYPE_INVALID
    assert _value(t, 0) == b"\x01"
    assert t[1].ulValueLen == CK_UNAVAILABLE_INFORMATION
    assert _value(t, 2) == b"\x01"


def test_a_card_that_knows_the_attribute_is_asked_once_and_believed(stack: Stack, card: Any) -> None:
    h = _open(stack)
    pub = _public_key(card, {CKA.COPYABLE: b"\x00"})
    t, keep = _query(PROVIDER_TEMPLATE)
    before = card.fake_calls(b"C_GetAttributeValue")
    assert stack.entries["C_GetAttributeValue"](h, pub, t, 4) == CKR.OK
    assert card.fake_calls(b"C_GetAttributeValue") - before == 1
    assert _value(t, 2) == b"\x00"
    assert "shim_answered" not in _last_call(stack)["args"]


def test_other_errors_of_the_card_pass_unchanged(stack: Stack, card: Any) -> None:
    h = _open(stack)
    t, keep = _query(PROVIDER_TEMPLATE)
    assert stack.entries["C_GetAttributeValue"](h, 999, t, 4) == CKR.OBJECT_HANDLE_INVALID
    pub = _public_key(card)
    before = card.fake_calls(b"C_GetAttributeValue")
    t, keep = _query((CKA.CLASS, CKA.ID))
    assert stack.entries["C_GetAttributeValue"](h, pub, t, 2) == CKR.OK
    assert card.fake_calls(b"C_GetAttributeValue") - before == 1  # no answerable attribute: one call
