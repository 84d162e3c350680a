"""Spec fixups: CKR rewrites and device-removed detection."""

from __future__ import annotations

from typing import Any

import pytest
from unit_stack import FFI, Loaded, add_ec_private_key

from shim import cabi
from shim.call import Call
from shim.constants import CKM, CKR, SessionFlag
from shim.errors import PKCS11Error
from shim.layers import fixups as fixups_mod
from shim.layers.fixups import Fixups


def _open(base: Loaded) -> int:
    h = FFI.new("CK_SESSION_HANDLE *")
    assert base.call("C_OpenSession", 1, SessionFlag.SERIAL_SESSION, cabi.NULL, cabi.NULL, h) == CKR.OK
    return int(h[0])


def test_object_handle_invalid_from_sign_init_becomes_key_handle_invalid(base: Loaded, card: Any) -> None:
    t = Fixups(base.table, slot_of=lambda h: 1).table()
    h = _open(base)
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    call = Call("C_SignInit")
    assert t["C_SignInit"](call, h, mech, 99) == CKR.KEY_HANDLE_INVALID  # the fake has no object 99
    assert call.error == "backend returned OBJECT_HANDLE_INVALID"


def test_functions_without_a_rewrite_or_a_session_are_the_layer_below(base: Loaded) -> None:
    t = Fixups(base.table, slot_of=lambda h: None).table()
    assert t["C_GetSlotList"] is base.table["C_GetSlotList"]
    assert t["C_Sign"] is not base.table["C_Sign"]


def test_general_error_on_a_removable_slot_without_token_is_device_removed(base: Loaded, card: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixups_mod, "_PROBE_INTERVAL_S", 0)
    t = Fixups(base.table, slot_of=lambda h: 1).table()
    h = _open(base)
    card.fake_force(b"C_Sign", CKR.GENERAL_ERROR)
    card.fake_slot(1, 0)  # a reader, and the card is gone
    with pytest.raises(PKCS11Error) as e:
        t["C_Sign"](Call("C_Sign"), h, cabi.NULL, 0, cabi.NULL, FFI.new("CK_ULONG *"))
    assert e.value.rv == CKR.DEVICE_REMOVED


def test_general_error_on_a_fixed_token_stays_and_is_probed_once(base: Loaded, card: Any) -> None:
    t = Fixups(base.table, slot_of=lambda h: 1).table()
    h = _open(base)
    add_ec_private_key(card, b"\x04" + bytes(64))
    card.fake_force(b"C_Sign", CKR.GENERAL_ERROR)
    before = card.fake_calls(b"C_GetSlotInfo")
    assert t["C_Sign"](Call("C_Sign"), h, cabi.NULL, 0, cabi.NULL, FFI.new("CK_ULONG *")) == CKR.GENERAL_ERROR
    assert card.fake_calls(b"C_GetSlotInfo") == before + 1


def test_sessions_the_shim_does_not_know_are_not_probed(base: Loaded, card: Any) -> None:
    t = Fixups(base.table, slot_of=lambda h: None).table()
    card.fake_force(b"C_Sign", CKR.GENERAL_ERROR)
    before = card.fake_calls(b"C_GetSlotInfo")
    assert t["C_Sign"](Call("C_Sign"), 5, cabi.NULL, 0, cabi.NULL, FFI.new("CK_ULONG *")) == CKR.GENERAL_ERROR
    assert card.fake_calls(b"C_GetSlotInfo") == before


def test_the_rewrites_are_the_spec_tables_key_handle_functions() -> None:
    assert fixups_mod.RV_REWRITES["C_SignInit"] == {CKR.OBJECT_HANDLE_INVALID: CKR.KEY_HANDLE_INVALID}
    assert fixups_mod.RV_REWRITES["C_UnwrapKey"] == {CKR.OBJECT_HANDLE_INVALID: CKR.UNWRAPPING_KEY_HANDLE_INVALID}
    assert fixups_mod.RV_REWRITES["C_WrapKey"] == {CKR.OBJECT_HANDLE_INVALID: CKR.KEY_HANDLE_INVALID}
    assert "C_GetAttributeValue" not in fixups_mod.RV_REWRITES  # it may say OBJECT_HANDLE_INVALID
    assert len(fixups_mod.RV_REWRITES) == 10


@pytest.mark.parametrize("gone", [CKR.DEVICE_REMOVED, CKR.TOKEN_NOT_PRESENT, CKR.SESSION_HANDLE_INVALID])
def test_a_missing_token_makes_the_slot_asked_once_so_a_new_card_is_noticed(base: Loaded, card: Any,
                                                                            gone: int) -> None:
    t = Fixups(base.table, slot_of=lambda h: 1).table()
    h = _open(base)
    card.fake_force(b"C_Login", gone)
    before = card.fake_calls(b"C_GetSlotInfo")
    call = Call("C_Login")
    assert t["C_Login"](call, h, 1, FFI.new("CK_UTF8CHAR[]", b"1234"), 4) == gone
    assert card.fake_calls(b"C_GetSlotInfo") == before + 1
    assert call.args["slot_refreshed"] == {"slot": 1, "rv": "OK"}
