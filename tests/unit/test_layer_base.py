"""The base layer: every function forwarded unchanged to the backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unit_stack import FFI, Loaded

from shim import cabi
from shim.call import Call
from shim.constants import CKR, SessionFlag
from shim.layers.base import SERVED, Base


def test_base_serves_every_function_but_the_ones_answered_in_c() -> None:
    table = Base().table()
    assert set(table) == set(SERVED)
    assert len(table) == 67 and "C_GetFunctionList" not in table


def test_before_the_backend_is_loaded_every_forwarder_says_not_initialised(card: Any) -> None:
    table = Base().table()
    assert table["C_GetSlotList"](Call("C_GetSlotList"), 0, cabi.NULL, FFI.new("CK_ULONG *")) == \
        CKR.CRYPTOKI_NOT_INITIALIZED
    assert card.fake_calls(b"C_GetSlotList") == 0


def test_forwarder_passes_arguments_and_answer_through(base: Loaded, card: Any) -> None:
    count = FFI.new("CK_ULONG *")
    assert base.call("C_GetSlotList", 1, cabi.NULL, count) == CKR.OK
    assert count[0] == 1 and card.fake_calls(b"C_GetSlotList") == 1
    card.fake_force(b"C_GetSlotList", CKR.DEVICE_ERROR)
    assert base.call("C_GetSlotList", 1, cabi.NULL, count) == CKR.DEVICE_ERROR


def test_masked_functions_answer_not_supported_without_reaching_the_backend(card: Any, fake_module: Path) -> None:
    b = Base()
    b.load(str(fake_module), frozenset({"C_GenerateRandom"}))
    table = b.table()
    h = FFI.new("CK_SESSION_HANDLE *")
    assert table["C_Initialize"](Call("C_Initialize"), cabi.NULL) == CKR.OK
    flags = SessionFlag.SERIAL_SESSION
    assert table["C_OpenSession"](Call("C_OpenSession"), 1, flags, cabi.NULL, cabi.NULL, h) == CKR.OK
    buf = FFI.new("CK_BYTE[]", 8)
    assert table["C_GenerateRandom"](Call("C_GenerateRandom"), h[0], buf, 8) == CKR.FUNCTION_NOT_SUPPORTED
    assert card.fake_calls(b"C_GenerateRandom") == 0
    table["C_Finalize"](Call("C_Finalize"), cabi.NULL)
