"""The allowed-CKR table (shim/spec.py): complete, faithful to section 5.1, and data only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shim import spec
from shim.constants import CKR
from shim.functions import FUNCTIONS


def test_every_v240_function_has_its_return_values() -> None:
    names = [f.name for f in FUNCTIONS]
    assert len(names) == 68
    assert set(spec.RETURN_VALUES) == set(names)
    assert set(spec.ALLOWED) == set(names) | set(spec.INTERFACE_RETURN_VALUES)


def test_every_list_holds_ok_or_is_a_legacy_parallel_function() -> None:
    for fn, listed in spec.RETURN_VALUES.items():
        assert (CKR.OK in listed) == (fn not in spec.NEVER_OK), fn


@pytest.mark.parametrize("fn", [f.name for f in FUNCTIONS])
def test_functions_with_a_session_handle_may_report_it_invalid(fn: str) -> None:
    takes_session = any(p.ctype == "CK_SESSION_HANDLE" for p in next(f for f in FUNCTIONS if f.name == fn).params)
    assert (CKR.SESSION_HANDLE_INVALID in spec.ALLOWED[fn]) == takes_session
    assert CKR.FUNCTION_NOT_SUPPORTED in spec.ALLOWED[fn]


def test_section_5_1_rules() -> None:
    assert not spec.allowed("C_Initialize", CKR.CRYPTOKI_NOT_INITIALIZED)
    assert not spec.allowed("C_GetFunctionList", CKR.CRYPTOKI_NOT_INITIALIZED)
    assert spec.allowed("C_Finalize", CKR.CRYPTOKI_NOT_INITIALIZED)
    assert not spec.allowed("C_GetFunctionStatus", CKR.OK)
    assert spec.allowed("C_GetFunctionStatus", CKR.FUNCTION_NOT_PARALLEL)
    assert spec.allowed("C_Sign", CKR.TOKEN_NOT_PRESENT)  # 5.1.4: uses a token
    assert not spec.allowed("C_GetSlotList", CKR.TOKEN_NOT_PRESENT)
    assert not spec.allowed("C_CloseSession", CKR.ARGUMENTS_BAD)  # not universal: not in its list
    assert not spec.allowed("C_Logout", CKR.PIN_EXPIRED)
    assert spec.allowed("C_Logout", CKR.USER_NOT_LOGGED_IN)
    assert not spec.allowed("C_SignFinal", CKR.DATA_INVALID)
    assert spec.allowed("C_Sign", CKR.DATA_INVALID)


def test_the_module_is_data_over_the_constants_only() -> None:
    tree = ast.parse(Path(spec.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "shim.constants"}
