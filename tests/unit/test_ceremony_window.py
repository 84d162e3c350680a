"""The ceremony window: the guard refuses card-changing functions outside a ceremony step and
everything a step does not need inside one, before the backend sees the call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from unit_stack import FFI, Loaded

from shim import cabi
from shim.call import Call
from shim.ceremony import policy
from shim.ceremony.policy import CARD_CHANGING, STEPS, Open, Window, write_window
from shim.constants import CKR
from shim.errors import PKCS11Error
from shim.layers.guard import Guard
from shim.spec import STATE_CHANGING


def test_card_changing_is_state_changing_without_the_login_state() -> None:
    assert CARD_CHANGING == STATE_CHANGING - {"C_Login", "C_Logout"}
    assert {"C_GenerateKeyPair", "C_DestroyObject", "C_InitToken", "C_WrapKey"} <= CARD_CHANGING
    # every step's set is drawn from the functions the shim knows, and only generate-ksk may make a key
    assert [s for s, fns in STEPS.items() if "C_GenerateKeyPair" in fns] == ["generate-ksk"]
    assert not any("C_DestroyObject" in fns or "C_InitToken" in fns for fns in STEPS.values())


def test_outside_a_step_only_card_changing_functions_are_refused(tmp_path: Path) -> None:
    w = Window(str(tmp_path / "window.json"))  # no file yet: no ceremony step open
    assert w.refusal("C_Sign") is None and w.refusal("C_GetTokenInfo") is None
    why = w.refusal("C_GenerateKeyPair")
    assert why is not None and "no ceremony step is open" in why
    write_window(w.path, None)
    assert w.refusal("C_DestroyObject") is not None and w.refusal("C_Login") is None


def test_an_open_step_admits_what_it_needs_and_a_closed_step_nothing_more(tmp_path: Path) -> None:
    path = str(tmp_path / "window.json")
    w = Window(path)
    write_window(path, Open("c1", "generate-ksk"))
    assert w.refusal("C_GenerateKeyPair") is None  # a card-changing call re-reads the file
    # C_Sign is not card-changing: the window as read at the last refresh governs it
    assert "step generate-ksk does not need it" in (w.refusal("C_Sign") or "")
    write_window(path, Open("c1", "backup"))
    why = w.refusal("C_GenerateKeyPair")
    assert why is not None and "ceremony c1 step backup" in why
    write_window(path, None)
    assert w.refusal("C_GenerateKeyPair") is not None and w.refusal("C_Sign") is None


@pytest.mark.parametrize("content", ["not json", "[1]", json.dumps({"ceremony": "c", "step": "format-card"})])
def test_an_unusable_window_file_refuses_card_changing_calls(tmp_path: Path, content: str) -> None:
    path = tmp_path / "window.json"
    path.write_text(content)
    w = Window(str(path))
    why = w.refusal("C_GenerateKeyPair")
    assert why is not None and "ceremony window" in why
    assert w.refusal("C_GetSlotList") is None
    assert isinstance(policy.read_window(str(path)), str)


def _guard(base: Loaded, window: Window) -> Guard:
    base.call("C_Finalize", cabi.NULL)
    return Guard(base.table, allow=None, load_backend=lambda: None, window=window)


def test_the_guard_refuses_before_the_backend_and_names_the_reason(base: Loaded, card: Any,
                                                                   tmp_path: Path) -> None:
    path = str(tmp_path / "window.json")
    t = _guard(base, Window(path)).table()
    assert t["C_Initialize"](Call("C_Initialize"), cabi.NULL) == CKR.OK
    before = card.fake_calls(b"C_GenerateKeyPair")
    with pytest.raises(PKCS11Error) as e:
        t["C_GenerateKeyPair"](Call("C_GenerateKeyPair"), 1, cabi.NULL, cabi.NULL, 0, cabi.NULL, 0,
                               FFI.new("CK_OBJECT_HANDLE *"), FFI.new("CK_OBJECT_HANDLE *"))
    assert e.value.rv == CKR.ACTION_PROHIBITED and "no ceremony step is open" in e.value.detail
    assert card.fake_calls(b"C_GenerateKeyPair") == before
    write_window(path, Open("c1", "close"))  # a step that needs no card: even reads are refused
    assert t["C_Finalize"](Call("C_Finalize"), cabi.NULL) == CKR.OK
    assert t["C_Initialize"](Call("C_Initialize"), cabi.NULL) == CKR.OK  # re-reads the window
    with pytest.raises(PKCS11Error) as e:
        t["C_GetSlotList"](Call("C_GetSlotList"), 0, cabi.NULL, FFI.new("CK_ULONG *"))
    assert e.value.rv == CKR.ACTION_PROHIBITED and "step close does not need it" in e.value.detail
