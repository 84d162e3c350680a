"""Unwritable log: fail-closed refuses and keeps what it wrote; fail-open counts a gap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_helpers import ROOT, read_lines, rec

from shim.audit.verify import verify
from shim.audit.writer import AuditUnavailable, AuditWriter

ARGS = {"session": 1, "mechanism": "CKM_ECDSA", "data_len": 32, "data_sha256": "ab" * 32}


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only), nearly filled by a file the test can delete to free space."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_fail_open_under_rlimit_fsize covers non-root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    try:
        (mnt / "filler").write_bytes(b"\0" * (64 * 1024 - 3 * 4096))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(w: AuditWriter, limit: int = 1000) -> int:
    """Write until the first failure; returns how many records were written."""
    for n in range(limit):
        before = w.lost
        try:
            w.write("call", fn="C_Sign", args=ARGS, rv="CKR_OK", dur_us=n, src="card")
        except AuditUnavailable:
            return n
        if w.lost > before:
            return n
    raise AssertionError("the tiny filesystem never filled up")


def test_fail_closed_raises_and_loses_nothing_written(tiny_fs: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    log = tiny_fs / "audit.jsonl"
    w = AuditWriter(str(log), on_failure="fail-closed", fsync="always")
    written = _fill(w)
    assert written > 5
    for _ in range(3):
        with pytest.raises(AuditUnavailable, match="No space left"):
            w.write("call", fn="C_Sign", args=ARGS, rv="CKR_OK", dur_us=0, src="card")
    err = capfd.readouterr().err
    assert err.count("cannot write") == 1  # reported once per outage, not per call
    r = verify(str(log))
    assert r.ok and r.torn is None and r.records == written  # partial line was cut back
    (tiny_fs / "filler").unlink()
    w.write("call", fn="C_Sign", args=ARGS, rv="CKR_OK", dur_us=0, src="card")
    w.close()
    r = verify(str(log))
    assert r.ok and r.records == written + 1 and r.lost_records == 0


def test_fail_open_writes_a_gap_record_with_the_count(tiny_fs: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    log = tiny_fs / "audit.jsonl"
    w = AuditWriter(str(log), on_failure="fail-open")
    written = _fill(w)
    for _ in range(6):
        w.write("call", fn="C_Sign", args=ARGS, rv="CKR_OK", dur_us=0, src="card")  # never raises
    assert w.lost == 7
    assert capfd.readouterr().err.count("cannot write") == 1
    (tiny_fs / "filler").unlink()
    w.write("call", fn="C_Sign", args={"after": "gap"}, rv="CKR_OK", dur_us=0, src="card")
    w.close()
    lines = read_lines(log)
    gap, after = rec(lines[-2]), rec(lines[-1])
    assert gap["kind"] == "gap" and gap["args"]["lost"] == 7 and "No space left" in gap["args"]["error"]
    assert after["args"] == {"after": "gap"}
    r = verify(str(log))
    assert r.ok and r.lost_records == 7 and r.records == written + 2 and r.torn is None


_RLIMIT_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from shim.audit.writer import AuditWriter
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    w = AuditWriter(sys.argv[1], on_failure=sys.argv[2])
    w.write("load")
    size = len(open(sys.argv[1], "rb").read())
    resource.setrlimit(resource.RLIMIT_FSIZE, (size * 6, resource.RLIM_INFINITY))
    ok = failed = 0
    for i in range(20):
        try:
            w.write("call", fn="C_Sign", args={"i": i}, rv="CKR_OK", dur_us=i, src="card")
            ok += 1
        except Exception as e:
            failed += 1
            kind = type(e).__name__
    lost = w.lost
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    w.write("call", fn="C_Finalize", rv="CKR_OK", dur_us=0)
    print(json.dumps({"ok": ok, "failed": failed, "lost": lost}))
""")


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
def test_file_size_limit_behaves_like_a_full_disk(log: Path, policy: str) -> None:
    """Works without root: RLIMIT_FSIZE makes write() fail with EFBIG in a child process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", _RLIMIT_CHILD, str(log), policy], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    written = 20 - out["lost"] - out["failed"]  # calls that reached the file
    assert written >= 3 and out["lost"] + out["failed"] > 0
    assert out["failed"] == 0 if policy == "fail-open" else out["lost"] == 0
    assert p.stderr.count("cannot write") == 1
    r = verify(str(log))
    assert r.ok and r.torn is None
    if policy == "fail-open":
        assert r.lost_records == out["lost"] and r.kinds["gap"] == 1
        assert r.records == 1 + written + 2  # load, calls, gap, C_Finalize
    else:
        assert r.lost_records == 0 and r.records == 1 + written + 1
