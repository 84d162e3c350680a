"""Format versions: every epoch says its version, every version ever released still verifies,
and a record must be in the writer's exact encoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from audit_helpers import enc, read_lines, rec, rechain, run_cli, two_process_log, write_calls, write_lines

from shim.audit import schema
from shim.audit.verify import verify
from shim.audit.writer import AuditWriter


def as_version_1(lines: list[bytes]) -> list[bytes]:
    """The same log as release 0.1's writer wrote it: no ``format`` field, otherwise byte-identical."""
    out = []
    for line in lines:
        r = rec(line)
        r.pop("format", None)
        out.append(enc(r))
    return rechain(out, 0)


def test_every_epoch_opens_with_the_format_version(log: Path) -> None:
    two_process_log(log)
    recs = [rec(x) for x in read_lines(log)]
    firsts = {}
    for r in recs:
        firsts.setdefault(r["epoch"], r)
    assert len(firsts) == 2
    assert all(r["format"] == schema.FORMAT_VERSION and list(r)[0] == "format" for r in firsts.values())
    assert sum("format" in r for r in recs) == 2  # only the epochs' first records
    res = verify(str(log))
    v = schema.FORMAT_VERSION
    assert res.ok and res.versions == {v: 2} and res.version_starts == [(1, v)]


def test_a_version_1_log_verifies_as_before(log: Path) -> None:
    two_process_log(log)
    write_lines(log, as_version_1(read_lines(log)))
    res = verify(str(log))
    assert res.ok and res.exit_code == 0 and res.records == 30 and res.versions == {1: 2}
    out = run_cli("verify", str(log))
    assert out.returncode == 0 and "format version(s): 1 from seq 1" in out.stdout


def test_an_upgrade_while_older_writers_append_verifies_and_is_marked(log: Path) -> None:
    w = AuditWriter(str(log), program="named")
    write_calls(w, 5)
    w.close()
    v1_lines = []
    for line in as_version_1(read_lines(log)):  # named 0.1 (another process) wrote seq 1-5
        r = rec(line)
        r["pid"] = 4242
        v1_lines.append(enc(r))
    v1_lines = rechain(v1_lines, 0)
    write_lines(log, v1_lines)
    w2 = AuditWriter(str(log), program="signzone")  # the upgraded tool appends seq 6-8
    write_calls(w2, 3)
    w2.close()
    # ...and the old named (its epoch, no format field) keeps appending after it
    old = rec(v1_lines[-1])
    lines = read_lines(log)
    for i in range(2):
        old.update(seq=9 + i, ts=old["ts"], prev=schema.line_hash(lines[-1]))
        lines.append(enc(old))
    write_lines(log, lines)
    res = verify(str(log))
    assert res.ok, res.reason
    v = schema.FORMAT_VERSION
    assert res.versions == {1: 1, v: 1} and res.version_starts == [(1, 1), (6, v), (9, 1)]
    assert rec(lines[5])["format"] == v  # the version change is itself a record
    assert f"format version(s): 1 from seq 1, {v} from seq 6, 1 from seq 9" in run_cli("verify", str(log)).stdout


def test_an_unknown_version_is_not_called_intact_or_tampered(log: Path) -> None:
    w = AuditWriter(str(log))
    write_calls(w, 3)
    w.close()
    lines = read_lines(log)
    first = rec(lines[0])
    first["format"] = 99
    lines[0] = enc(first)
    write_lines(log, rechain(lines, 1))
    res = verify(str(log))
    assert res.exit_code == 5 and res.unsupported == 99 and "not known to this verifier" in (res.reason or "")
    out = run_cli("verify", str(log))
    assert out.returncode == 5 and "unsupported: seq 1" in out.stdout


def test_a_format_field_on_a_later_record_is_tampering(log: Path) -> None:
    w = AuditWriter(str(log))
    write_calls(w, 5)
    w.close()
    lines = read_lines(log)
    r = rec(lines[2])
    lines[2] = enc({"format": 2, **r})
    write_lines(log, rechain(lines, 3))
    res = verify(str(log))
    assert not res.ok and res.first_bad_seq == 3 and "not the first record of its epoch" in (res.reason or "")


def test_a_kind_of_a_later_version_in_a_version_1_epoch_is_tampering(log: Path) -> None:
    w = AuditWriter(str(log))
    write_calls(w, 4)
    w.close()
    lines = as_version_1(read_lines(log))
    r = rec(lines[2])
    r["kind"] = "link"
    lines[2] = enc(r)
    write_lines(log, rechain(lines, 3))
    res = verify(str(log))
    assert not res.ok and res.first_bad_seq == 3 and "does not exist in format version 1" in (res.reason or "")


@pytest.mark.parametrize("how", ["duplicate key", "spacing", "escape", "crlf", "key order", "raw utf-8"])
def test_a_record_not_in_the_writers_encoding_is_tampering(log: Path, how: str) -> None:
    w = AuditWriter(str(log), program="named")
    write_calls(w, 6)
    w.close()
    lines = read_lines(log)
    body = lines[3][:-1]
    if how == "duplicate key":
        body = body.replace(b'"rv":"CKR_OK"', b'"rv":"CKR_PIN_INCORRECT","rv":"CKR_OK"')
    elif how == "spacing":
        body = body.replace(b'","', b'", "', 1)
    elif how == "escape":
        body = body.replace(b'"prog":"named"', b'"prog":"\\u006eamed"')
    elif how == "crlf":
        body = body + b"\r"
    elif how == "key order":
        r = rec(lines[3])
        body = json.dumps({"seq": r.pop("seq"), **r}, separators=(",", ":")).encode()
        body = body.replace(b'"seq":4,"ts"', b'"seq":4,"ts"')  # same order as FIELDS except...
        body = body.replace(b'"src":"card","prev"', b'"prev"')[:-1] + b',"src":"card"}'
    else:
        body = body.replace(b'"prog":"named"', '"prog":"nämed"'.encode())
    assert schema.parse_line(body) is not None  # still JSON
    lines[3] = body + b"\n"
    write_lines(log, rechain_raw(lines, 4))
    res = verify(str(log))
    assert not res.ok and res.first_bad_seq == 4, res.reason
    assert ("canonical encoding" in (res.reason or "")) or ("differ from schema" in (res.reason or ""))
    assert run_cli("verify", str(log)).returncode == 1


def rechain_raw(lines: list[bytes], start: int) -> list[bytes]:
    """Recompute prev from ``start`` on, leaving the lines before it byte for byte."""
    out = list(lines[:start])
    for line in lines[start:]:
        r = rec(line)
        r["prev"] = schema.line_hash(out[-1])
        out.append(enc(r))
    return out


def test_oversized_args_become_their_digest_and_lines_stay_bounded(log: Path) -> None:
    w = AuditWriter(str(log))
    w.write("call", fn="C_Sign", args={"blob": "x" * (2 * schema.MAX_LINE)}, rv="CKR_OK", dur_us=1, src="card")
    w.write("config", args={"blob": "y" * (2 * schema.MAX_LINE)})
    w.close()
    lines = read_lines(log)
    assert all(len(x) <= schema.MAX_LINE for x in lines)
    assert all(set(rec(x)["args"]) == {"oversize"} for x in lines)
    assert verify(str(log)).ok


def test_records_of_a_forked_child_carry_its_own_format_field(log: Path) -> None:
    w = AuditWriter(str(log))
    write_calls(w, 2)
    pid = os.fork()
    if pid == 0:
        try:
            write_calls(w, 2)
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    w.close()
    recs = [rec(x) for x in read_lines(log)]
    assert [("format" in r) for r in recs] == [True, False, True, False]


def _with_intent(log: Path) -> list[bytes]:
    """A log of this writer with a write-ahead ``intent`` before a C_DestroyObject call."""
    w = AuditWriter(str(log), program="named")
    write_calls(w, 2)
    w.write("intent", fn="C_DestroyObject", args={"session": 1, "object": 7})
    w.write("call", fn="C_DestroyObject", args={"session": 1, "object": 7}, rv="CKR_OK", dur_us=9)
    w.close()
    return read_lines(log)


def test_a_version_3_intent_record_verifies_with_both_verifiers(log: Path) -> None:
    import independent_verifier

    lines = _with_intent(log)
    intent = rec(lines[2])
    assert (intent["kind"], intent["fn"], intent["rv"], intent["dur_us"]) == ("intent", "C_DestroyObject", None, None)
    assert rec(lines[0])["format"] == 3
    res = verify(str(log))
    assert res.ok and res.versions == {3: 1}, res.reason
    ind = independent_verifier.verify(str(log), os.devnull, None, False)
    assert ind.exit == 0, ind.why


def test_an_intent_in_a_version_2_epoch_is_tampering(log: Path) -> None:
    import independent_verifier

    lines = _with_intent(log)
    first = rec(lines[0])
    first["format"] = 2  # the same records, declared as format 2 (which has no intent kind)
    lines[0] = enc(first)
    write_lines(log, rechain(lines, 1))
    res = verify(str(log))
    assert not res.ok and res.first_bad_seq == 3 and "does not exist in format version 2" in (res.reason or "")
    ind = independent_verifier.verify(str(log), os.devnull, None, False)
    assert (ind.exit, ind.seq) == (1, 3), ind.why


def test_an_intent_without_fn_is_not_a_record(log: Path) -> None:
    lines = _with_intent(log)
    r = rec(lines[2])
    r["fn"] = None
    assert schema.schema_error(r) == "intent record without fn"
