"""Every kind of tampering is detected and the first bad record is named; intact logs pass."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from audit_helpers import enc, read_lines, rec, rechain, run_cli, two_process_log, write_calls, write_lines

from shim.audit import schema
from shim.audit.verify import verify
from shim.audit.writer import AuditWriter


@pytest.fixture
def base(log: Path) -> tuple[Path, list[bytes]]:
    two_process_log(log)
    lines = read_lines(log)
    assert len(lines) == 30
    return log, lines


def assert_bad(path: Path, seq: int, *words: str) -> str:
    r = verify(str(path))
    assert not r.ok, "tampering not detected"
    assert r.first_bad_seq == seq, r.reason
    assert r.reason is not None
    for w in words:
        assert w in r.reason
    cli = run_cli("verify", str(path))
    assert cli.returncode == 1
    assert f"first bad record: seq {seq}: " in cli.stdout
    return r.reason


def test_intact_two_process_log_verifies(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    r = verify(str(log))
    assert r.ok and r.torn is None and r.exit_code == 0
    assert r.records == 30 and r.last_seq == 30
    assert sorted(r.epochs.values()) == [10, 20]
    assert r.kinds["call"] == 30 and r.fns["C_Sign"] == 30 and r.srcs["card"] == 30
    assert [rec(x)["seq"] for x in lines] == list(range(1, 31))
    assert run_cli("verify", str(log)).returncode == 0


def test_edited_record_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    lines[9] = lines[9].replace(b'"rv":"CKR_OK"', b'"rv":"CKR_PIN_INCORRECT"')
    write_lines(log, lines)
    assert_bad(log, 10, "modified")


def test_edited_first_record_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    lines[0] = lines[0].replace(b'"dur_us":0', b'"dur_us":7')
    write_lines(log, lines)
    assert_bad(log, 1, "modified")


def test_edited_prev_field_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    r = rec(lines[14])
    r["prev"] = "ab" * 32
    lines[14] = enc(r)
    write_lines(log, lines)
    assert_bad(log, 15, "modified")


def test_edit_that_breaks_json_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    lines[4] = lines[4][:40] + b"\n"
    write_lines(log, lines)
    assert_bad(log, 5, "not a valid record")


def test_deleted_record_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    del lines[11]
    write_lines(log, lines)
    assert_bad(log, 12, "missing")


def test_deleted_first_record_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    write_lines(log, lines[1:])
    assert_bad(log, 1, "missing")


def test_inserted_forged_record_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    forged = rec(lines[6])  # a plausible copy of seq 7, chained correctly after seq 6
    forged["fn"] = "C_DestroyObject"
    forged["prev"] = schema.line_hash(lines[5])
    lines.insert(6, enc(forged))
    write_lines(log, lines)
    assert_bad(log, 7, "inserted")


def test_inserted_record_with_new_seq_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    forged = rec(lines[6])
    forged["seq"] = 31
    lines.insert(6, enc(forged))
    write_lines(log, lines)
    assert_bad(log, 7)


def test_reordered_records_are_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    lines[16], lines[17] = lines[17], lines[16]
    write_lines(log, lines)
    assert_bad(log, 17, "out of order")


def test_duplicated_record_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    lines.insert(8, lines[7])
    write_lines(log, lines)
    assert_bad(log, 8, "appears again")


def test_records_spliced_from_another_log_are_named(base: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    log, lines = base
    other = tmp_path / "other.jsonl"
    w = AuditWriter(str(other), program="named")
    write_calls(w, 30)
    w.close()
    foreign = read_lines(other)
    write_lines(log, lines[:12] + foreign[12:16] + lines[16:])  # same seq numbers, other chain
    assert_bad(log, 13, "another log")


def test_spliced_records_with_other_seqs_are_named(base: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    log, lines = base
    other = tmp_path / "other.jsonl"
    w = AuditWriter(str(other), program="named")
    write_calls(w, 5)
    w.close()
    write_lines(log, lines[:22] + read_lines(other)[:3] + lines[22:])
    assert_bad(log, 23, "another log")


def test_truncation_in_the_middle_of_lines_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    data = b"".join(lines)
    cut_from = sum(map(len, lines[:9])) + 50  # inside seq 10
    cut_to = sum(map(len, lines[:14])) + 80  # inside seq 15
    log.write_bytes(data[:cut_from] + data[cut_to:])
    assert_bad(log, 10)


def test_truncation_of_whole_lines_in_the_middle_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    write_lines(log, lines[:9] + lines[14:])
    assert_bad(log, 10, "10..14 missing")


def test_record_rechained_under_the_other_process_epoch_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    child_epoch = rec(lines[12])["epoch"]
    moved = rec(lines[24])  # a parent record, relabelled as the child's
    moved["epoch"] = child_epoch
    lines[24] = enc(moved)
    write_lines(log, rechain(lines, 25))  # the chain itself is recomputed: hashes all match
    assert_bad(log, 25, "another epoch")


def test_record_rechained_under_a_fresh_epoch_is_named(base: tuple[Path, list[bytes]]) -> None:
    log, lines = base
    moved = rec(lines[24])
    moved["epoch"] = secrets.token_hex(8)
    lines[24] = enc(moved)
    write_lines(log, rechain(lines, 25))
    assert_bad(log, 25, "epoch")


def test_full_rewrite_of_the_chain_is_not_detectable_without_checkpoints(
        base: tuple[Path, list[bytes]]) -> None:
    """The documented limit of a bare hash chain (see test_audit_checkpoint for the remedy)."""
    log, lines = base
    r = rec(lines[3])
    r["rv"] = "CKR_FUNCTION_FAILED"
    lines[3] = enc(r)
    write_lines(log, rechain(lines, 4))
    assert verify(str(log)).ok


def test_verifier_reports_counts_for_reports(base: tuple[Path, list[bytes]]) -> None:
    log, _ = base
    out = run_cli("verify", "-v", str(log))
    assert out.returncode == 0
    assert "30 records checked, seq 1..30, 2 epoch(s)" in out.stdout
    assert "fn: C_Sign=30" in out.stdout
