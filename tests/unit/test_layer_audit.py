"""The audit layer: one record per call, exceptions as CKRs, fail-closed refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unit_stack import FFI, Stack, add_ec_private_key

from shim import cabi
from shim.audit.writer import AuditUnavailable
from shim.call import Call
from shim.constants import CKM, CKR, CKU, SessionFlag
from shim.errors import PKCS11Error
from shim.layers.audit import Audit


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _open(stack: Stack) -> int:
    assert stack.entries["C_Initialize"](cabi.NULL) == CKR.OK
    h = FFI.new("CK_SESSION_HANDLE *")
    assert stack.entries["C_OpenSession"](1, SessionFlag.SERIAL_SESSION, cabi.NULL, cabi.NULL, h) == CKR.OK
    return int(h[0])


class _Failing:
    """A writer whose disk is full."""

    def write(self, *_: Any, **__: Any) -> None:
        raise AuditUnavailable("disk full")

    write_call = write


def test_every_call_gets_one_record_with_its_result(stack: Stack) -> None:
    h = _open(stack)
    info = FFI.new("CK_SESSION_INFO *")
    assert stack.entries["C_GetSessionInfo"](h, info) == CKR.OK
    assert stack.entries["C_GetSessionInfo"](h + 5, info) == CKR.SESSION_HANDLE_INVALID
    calls = [r for r in records(stack.log) if r["kind"] == "call"]
    assert [c["fn"] for c in calls] == ["C_Initialize", "C_OpenSession", "C_GetSessionInfo", "C_GetSessionInfo"]
    assert calls[2]["rv"] == "CKR_OK" and calls[2]["args"]["session"] == h
    assert calls[3]["rv"] == "CKR_SESSION_HANDLE_INVALID"


def test_a_pin_never_reaches_the_record(stack: Stack) -> None:
    h = _open(stack)
    pin = b"s3cr3t-PIN"
    stack.entries["C_Login"](h, CKU.USER, FFI.new("CK_UTF8CHAR[]", pin), len(pin))
    assert b"s3cr3t" not in stack.log.read_bytes()
    assert records(stack.log)[-1]["fn"] == "C_Login"


def test_an_exception_below_is_a_ckr_with_the_reason_recorded(stack: Stack) -> None:
    def broken(call: Call, *args: Any) -> int:
        raise ValueError("bug")

    def refusing(call: Call, *args: Any) -> int:
        raise PKCS11Error(CKR.KEY_TYPE_INCONSISTENT, "not this key")

    audit = Audit({"C_GetInfo": broken, "C_Logout": refusing}, stack.writer, fail_closed=True)
    entries = audit.entries()
    assert entries["C_GetInfo"](FFI.new("CK_INFO *")) == CKR.GENERAL_ERROR
    assert entries["C_Logout"](1) == CKR.KEY_TYPE_INCONSISTENT
    last = [r for r in records(stack.log) if r["kind"] == "call"][-2:]
    assert last[0]["error"] == "ValueError: bug" and last[1]["error"] == "not this key"


def test_fail_closed_turns_a_signature_into_an_error_and_ends_the_card_operation(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    assert stack.entries["C_SignInit"](h, mech, key) == CKR.OK
    audit = Audit(stack.guard.table(), _Failing(), fail_closed=True)  # type: ignore[arg-type]
    entries = audit.entries()
    data = FFI.new("CK_BYTE[]", b"\x07" * 32)
    sig = FFI.new("CK_BYTE[]", 64)
    n = FFI.new("CK_ULONG *", 64)
    assert entries["C_Sign"](h, data, 32, sig, n) == CKR.GENERAL_ERROR
    assert n[0] == 0 and bytes(FFI.buffer(sig)) == bytes(64)  # the signature is not handed out
    # A refused C_SignInit leaves no operation active in the card either.
    assert entries["C_SignInit"](h, mech, key) == CKR.GENERAL_ERROR
    assert stack.entries["C_SignInit"](h, mech, key) == CKR.OK


class _Buggy:
    """A writer with a bug (not an I/O failure)."""

    def write(self, *_: Any, **__: Any) -> None:
        raise RuntimeError("bug in the audit path")


def test_a_bug_in_the_audit_path_refuses_success_only_when_fail_closed(stack: Stack) -> None:
    closed = Audit(stack.guard.table(), _Buggy(), fail_closed=True)  # type: ignore[arg-type]
    opened = Audit(stack.guard.table(), _Buggy(), fail_closed=False)  # type: ignore[arg-type]
    assert closed.record_call(Call("C_GetSessionInfo"), CKR.OK, 0) == CKR.GENERAL_ERROR
    assert opened.record_call(Call("C_GetSessionInfo"), CKR.OK, 0) == CKR.OK
    assert closed.record_call(Call("C_GetSessionInfo"), CKR.SESSION_CLOSED, 0) == CKR.SESSION_CLOSED


class _FailingAfter:
    """A writer whose disk fills after ``n`` records."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.n = inner, n

    def write(self, kind: str, **fields: Any) -> None:
        if self.n <= 0:
            raise AuditUnavailable("disk full")
        self.n -= 1
        self.inner.write(kind, **fields)


def test_a_state_changing_call_is_announced_before_it_reaches_the_card(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    card.fake_force(b"C_DestroyObject", CKR.OK)  # the fake's card deletes it
    assert stack.entries["C_DestroyObject"](h, key) == CKR.OK
    recs = records(stack.log)[-2:]
    assert [(r["kind"], r["fn"], r["rv"]) for r in recs] == [("intent", "C_DestroyObject", None),
                                                           ("call", "C_DestroyObject", "CKR_OK")]
    assert recs[0]["args"] == {"session": h, "object": key}


def test_a_state_changing_call_whose_intent_cannot_be_written_never_reaches_the_card(stack: Stack,
                                                                                     card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    audit = Audit(stack.guard.table(), _Failing(), fail_closed=True)  # type: ignore[arg-type]
    before = card.fake_calls(b"C_DestroyObject")
    assert audit.entries()["C_DestroyObject"](h, key) == CKR.GENERAL_ERROR
    assert card.fake_calls(b"C_DestroyObject") == before  # the key is still on the card


def test_signing_writes_no_intent(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    assert stack.entries["C_SignInit"](h, mech, key) == CKR.OK
    n = FFI.new("CK_ULONG *", 64)
    assert stack.entries["C_Sign"](h, FFI.new("CK_BYTE[]", 32), 32, FFI.new("CK_BYTE[]", 64), n) == CKR.OK
    assert not [r for r in records(stack.log) if r["kind"] == "intent"]


def test_an_intent_written_then_a_lost_outcome_still_says_what_was_tried(stack: Stack, card: Any) -> None:
    h = _open(stack)
    key = add_ec_private_key(card, b"\x04" + bytes(64))
    card.fake_force(b"C_DestroyObject", CKR.OK)
    audit = Audit(stack.guard.table(), _FailingAfter(stack.writer, 1), fail_closed=True)  # type: ignore[arg-type]
    assert audit.entries()["C_DestroyObject"](h, key) == CKR.GENERAL_ERROR  # done, but unrecorded: refused
    assert card.fake_calls(b"C_DestroyObject") == 1
    last = records(stack.log)[-1]
    assert (last["kind"], last["fn"], last["args"]["object"]) == ("intent", "C_DestroyObject", key)
