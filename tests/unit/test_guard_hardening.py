"""The guard: lengths and counts beyond sane bounds never reach the card, and C_Finalize waits
for the calls in flight (the fake holds a C_Sign inside the module while a C_Finalize arrives)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from unit_stack import FFI, Stack, add_ec_private_key

from shim import cabi
from shim.constants import CKM, CKR, CKU, SessionFlag
from shim.functions import BY_NAME
from shim.layers import guard as guard_mod
from shim.spec import ALLOWED


def _open(stack: Stack) -> int:
    assert stack.entries["C_Initialize"](cabi.NULL) == CKR.OK
    h = FFI.new("CK_SESSION_HANDLE *")
    assert stack.entries["C_OpenSession"](1, SessionFlag.SERIAL_SESSION, cabi.NULL, cabi.NULL, h) == CKR.OK
    return int(h[0])


def test_a_pin_length_of_2_to_the_40_never_reaches_the_card(stack: Stack, card: Any) -> None:
    h = _open(stack)
    pin = FFI.new("CK_UTF8CHAR[]", b"1234")
    before = card.fake_calls(b"C_Login")
    assert stack.entries["C_Login"](h, CKU.USER, pin, 1 << 40) == CKR.ARGUMENTS_BAD
    assert card.fake_calls(b"C_Login") == before
    assert stack.entries["C_Login"](h, CKU.USER, pin, 4) != CKR.ARGUMENTS_BAD  # a sane one reaches the card
    assert card.fake_calls(b"C_Login") == before + 1


@pytest.mark.parametrize("fn,args", [
    ("C_Sign", lambda h, b: (h, b, 1 << 40, b, FFI.new("CK_ULONG *", 64))),
    ("C_FindObjectsInit", lambda h, b: (h, FFI.new("CK_ATTRIBUTE[]", 1), 1 << 33)),
    ("C_SetPIN", lambda h, b: (h, b, 4, b, (1 << 64) - 1)),
    ("C_GenerateRandom", lambda h, b: (h, b, 1 << 40)),
])
def test_absurd_lengths_and_counts_are_arguments_bad(stack: Stack, card: Any, fn: str, args: Any) -> None:
    h = _open(stack)
    buf = FFI.new("CK_BYTE[]", 64)
    before = card.fake_calls(fn.encode())
    assert stack.entries[fn](*args(h, buf)) == CKR.ARGUMENTS_BAD
    assert card.fake_calls(fn.encode()) == before


def test_a_template_value_length_beyond_bounds_is_refused(stack: Stack, card: Any) -> None:
    h = _open(stack)
    tmpl = FFI.new("CK_ATTRIBUTE[]", 1)
    buf = FFI.new("CK_BYTE[]", 8)
    tmpl[0].type, tmpl[0].pValue, tmpl[0].ulValueLen = 0x11, buf, 1 << 40
    assert stack.entries["C_CreateObject"](h, tmpl, 1, FFI.new("CK_OBJECT_HANDLE *")) == CKR.ARGUMENTS_BAD


def test_every_bounds_refusal_is_a_ckr_the_spec_allows() -> None:
    for name, spec in BY_NAME.items():
        if guard_mod.bound_checks(spec) and name in ALLOWED:
            rv = CKR.ARGUMENTS_BAD if CKR.ARGUMENTS_BAD in ALLOWED[name] else CKR.MECHANISM_PARAM_INVALID
            assert rv in ALLOWED[name], name


def test_finalize_waits_for_a_sign_in_flight(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    assert stack.entries["C_SignInit"](h, mech, key) == CKR.OK
    data, sig, n = FFI.new("CK_BYTE[]", b"\x07" * 32), FFI.new("CK_BYTE[]", 64), FFI.new("CK_ULONG *", 64)
    results: dict[str, int] = {}
    card.fake_hold(1)
    signer = threading.Thread(target=lambda: results.update(sign=stack.entries["C_Sign"](h, data, 32, sig, n)))
    signer.start()
    while not card.fake_in_sign():  # the card is now working on the signature
        time.sleep(0.001)
    finalizer = threading.Thread(target=lambda: results.update(fin=stack.entries["C_Finalize"](cabi.NULL)))
    finalizer.start()
    while not stack.guard._finalizing:  # C_Finalize arrived and is waiting
        time.sleep(0.001)
    # A call arriving while C_Finalize waits is refused, not started.
    assert stack.entries["C_GetSessionInfo"](h, FFI.new("CK_SESSION_INFO *")) == CKR.CRYPTOKI_NOT_INITIALIZED
    card.fake_hold(0)
    signer.join()
    finalizer.join()
    assert card.fake_finalized_during_call() == 0
    assert results == {"sign": CKR.OK, "fin": CKR.OK}
    assert stack.entries["C_Initialize"](cabi.NULL) == CKR.OK  # the library can start again
