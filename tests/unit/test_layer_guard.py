"""The guard: initialisation, the policy allow-list, and what a fork resets."""

from __future__ import annotations

from typing import Any

import pytest
from unit_stack import FFI, LIB, Loaded

from shim import cabi
from shim.call import Call
from shim.constants import CKR
from shim.errors import PKCS11Error
from shim.layers.guard import Guard


def _guard(base: Loaded, *, allow: frozenset[str] | None = None, hooks: list[str] | None = None) -> Guard:
    seen = hooks if hooks is not None else []
    base.call("C_Finalize", cabi.NULL)  # the guard initialises the backend itself
    return Guard(base.table, allow=allow, load_backend=lambda: seen.append("load"),
                 on_fork=(lambda: seen.append("fork"),))


def test_only_c_initialize_is_admitted_before_initialisation(base: Loaded, card: Any) -> None:
    t = _guard(base).table()
    before = card.fake_calls(b"C_GetSlotList")
    assert t["C_GetSlotList"](Call("C_GetSlotList"), 0, cabi.NULL, FFI.new("CK_ULONG *")) == \
        CKR.CRYPTOKI_NOT_INITIALIZED
    assert card.fake_calls(b"C_GetSlotList") == before
    assert t["C_Initialize"](Call("C_Initialize"), cabi.NULL) == CKR.OK
    assert t["C_GetSlotList"](Call("C_GetSlotList"), 0, cabi.NULL, FFI.new("CK_ULONG *")) == CKR.OK


def test_initialize_loads_the_backend_and_refuses_a_second_time(base: Loaded) -> None:
    seen: list[str] = []
    g = _guard(base, hooks=seen)
    t = g.table()
    assert t["C_Initialize"](Call("C_Initialize"), cabi.NULL) == CKR.OK
    assert seen == ["load"] and g.initialized
    assert t["C_Initialize"](Call("C_Initialize"), cabi.NULL) == CKR.CRYPTOKI_ALREADY_INITIALIZED
    assert t["C_Finalize"](Call("C_Finalize"), FFI.new("int *")) == CKR.ARGUMENTS_BAD
    assert t["C_Finalize"](Call("C_Finalize"), cabi.NULL) == CKR.OK and not g.initialized


def test_initialize_argument_rules(base: Loaded) -> None:
    t = _guard(base).table()
    args = FFI.new("CK_C_INITIALIZE_ARGS *")
    args.pReserved = FFI.new("int *")
    with pytest.raises(PKCS11Error) as e:
        t["C_Initialize"](Call("C_Initialize"), args)
    assert e.value.rv == CKR.ARGUMENTS_BAD


def test_a_function_outside_the_allow_list_is_refused_before_the_backend(base: Loaded, card: Any) -> None:
    t = _guard(base, allow=frozenset({"C_GetSlotList"})).table()
    assert t["C_Initialize"](Call("C_Initialize"), cabi.NULL) == CKR.OK  # always admitted
    assert t["C_GetSlotList"](Call("C_GetSlotList"), 0, cabi.NULL, FFI.new("CK_ULONG *")) == CKR.OK
    before = card.fake_calls(b"C_GetInfo")
    with pytest.raises(PKCS11Error) as e:
        t["C_GetInfo"](Call("C_GetInfo"), FFI.new("CK_INFO *"))
    assert e.value.rv == CKR.ACTION_PROHIBITED and "allow_functions" in e.value.detail
    assert card.fake_calls(b"C_GetInfo") == before


def test_after_fork_the_child_must_initialise_again_and_the_backend_is_reinitialised(base: Loaded,
                                                                                   card: Any) -> None:
    seen: list[str] = []
    g = _guard(base, hooks=seen)
    t = g.table()
    assert t["C_Initialize"](Call("C_Initialize"), cabi.NULL) == CKR.OK
    LIB.sc4_fork_generation += 1  # what pthread_atfork does in the child
    try:
        assert t["C_GetSlotList"](Call("C_GetSlotList"), 0, cabi.NULL, FFI.new("CK_ULONG *")) == \
            CKR.CRYPTOKI_NOT_INITIALIZED
        assert seen == ["load", "fork"] and g.inherited
        call = Call("C_Initialize")
        finalized = card.fake_calls(b"C_Finalize")
        assert t["C_Initialize"](call, cabi.NULL) == CKR.OK  # the fake still holds the "parent's" state
        assert call.args["reinitialised_after_fork"] is True
        assert card.fake_calls(b"C_Finalize") == finalized + 1
    finally:
        LIB.sc4_fork_generation -= 1
        g.after_fork()
