"""Torn last lines: reported as such, closed by the next writer's recovery record."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from audit_helpers import ROOT, read_lines, rec, run_cli, write_calls, write_lines

from shim.audit import schema
from shim.audit.verify import verify
from shim.audit.writer import AuditWriter


def _log_with_torn_tail(log: Path, n: int = 12) -> tuple[int, bytes]:
    w = AuditWriter(str(log))
    write_calls(w, n)
    w.close()
    size = log.stat().st_size
    fragment = read_lines(log)[-1][:57]  # a realistic prefix of a record
    with open(log, "ab") as f:
        f.write(fragment)
    return size, fragment


def test_torn_last_line_is_reported_as_torn(log: Path) -> None:
    size, fragment = _log_with_torn_tail(log)
    r = verify(str(log))
    assert r.ok and r.records == 12  # every complete record was still checked
    assert r.torn is not None
    assert (r.torn.offset, r.torn.length, r.torn.sha256) == (size, len(fragment), schema.line_hash(fragment))
    assert r.exit_code == 3
    out = run_cli("verify", str(log))
    assert out.returncode == 3 and "torn last line" in out.stdout


def test_tampering_before_a_torn_line_still_fails(log: Path) -> None:
    _log_with_torn_tail(log)
    lines = read_lines(log)
    lines[3] = lines[3].replace(b'"dur_us":3', b'"dur_us":4')
    write_lines(log, lines)
    r = verify(str(log))
    assert not r.ok and r.first_bad_seq == 4 and r.exit_code == 1


def test_next_writer_recovers_torn_line_and_log_verifies(log: Path) -> None:
    size, fragment = _log_with_torn_tail(log)
    w = AuditWriter(str(log))
    w.write("call", fn="C_Sign", args={"after": "crash"}, rv="CKR_OK", dur_us=1, src="card")
    w.close()
    lines = read_lines(log)
    assert lines[12] == fragment + b"\n"  # the fragment was terminated, not rewritten
    recovery = rec(lines[13])
    assert recovery["kind"] == "recovery" and recovery["seq"] == 13
    assert recovery["args"] == {"torn_offset": size, "torn_len": len(fragment),
                                "torn_sha256": schema.line_hash(fragment),
                                "after_sha256": schema.line_hash(lines[11])}
    assert recovery["prev"] == schema.line_hash(fragment)
    assert rec(lines[14])["seq"] == 14
    r = verify(str(log))
    assert r.ok and r.torn is None and r.exit_code == 0 and r.records == 14
    assert [(t.offset, t.length, t.recovery_seq) for t in r.recovered] == [(size, len(fragment), 13)]
    out = run_cli("verify", str(log))
    assert out.returncode == 0 and f"torn line (recovered by seq 13): offset {size}" in out.stdout


def test_recovery_record_must_match_the_torn_bytes(log: Path) -> None:
    _log_with_torn_tail(log)
    AuditWriter(str(log)).write("load")
    lines = read_lines(log)
    lines[12] = lines[12].replace(b"seq", b"sEq")  # someone edits the torn fragment afterwards
    write_lines(log, lines)
    r = verify(str(log))
    assert not r.ok and r.first_bad_seq == 13 and "torn line" in (r.reason or "")


def test_recovery_record_without_torn_line_is_tampering(log: Path) -> None:
    _log_with_torn_tail(log)
    AuditWriter(str(log)).write("load")
    lines = read_lines(log)
    del lines[12]  # drop the fragment, keep the recovery record that names it
    write_lines(log, lines)
    r = verify(str(log))
    assert not r.ok and r.first_bad_seq == 13


def test_file_of_garbage_only_is_recovered_from_genesis(log: Path) -> None:
    log.write_bytes(b"\x00\x01garbage")
    AuditWriter(str(log)).write("load")
    r = verify(str(log))
    assert r.ok and r.records == 2 and r.recovered[0].offset == 0


_KILL_WRITER = """
import sys
from shim.audit.writer import AuditWriter
w = AuditWriter(sys.argv[1], program="signer")
print("ready", flush=True)
i = 0
while True:
    w.write("call", fn="C_Sign", args={"i": i, "blob": "x" * (i % 3000)}, rv="CKR_OK", dur_us=i, src="card")
    i += 1
"""


def test_sigkill_at_random_points_never_yields_a_false_chain(log: Path) -> None:
    """Crash consistency: every complete record verifies; a torn tail is reported, never accepted."""
    rng = random.Random(8)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", _KILL_WRITER, str(log)], stdout=subprocess.PIPE,
                             env=env, cwd=ROOT)
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.005, 0.05))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if rng.random() < 0.5:  # also simulate a kill inside write(): cut the file mid-line
            data = log.read_bytes()
            log.write_bytes(data[: len(data) - rng.randint(1, 200)])
        r = verify(str(log))
        assert r.ok, r.reason
        assert r.exit_code in (0, 3)
    AuditWriter(str(log)).write("load")
    final = verify(str(log))
    assert final.ok and final.exit_code == 0 and final.records > 8
