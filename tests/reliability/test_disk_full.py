"""Disk full under the audit log, on a real tiny tmpfs, while a client signs.

fail-closed: while the log cannot be written, signing is refused with a CKR and
an operator message on stderr; nothing already written is lost; signing works
again once space returns, each signature the client got has its record.
fail-open: signing goes on; once writing works again one gap record counts the
lost records; the log verifies.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rel_helpers import SIGNER, ShimRun, Token, audit_cli, check_signatures, record_figure, signer_env

from shim.audit.verify import verify


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path) -> Path:
    """Take every free byte of ``fs`` (until ENOSPC)."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler


def count_sigs(path: Path) -> int:
    return path.read_text().count('"s":') if path.exists() else 0


def sign_through_outage(run: ShimRun, fs: Path, sigs: Path) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Sign for a while, fill the disk for ~1.5 s, free it, sign on; returns (signer result, log before)."""
    proc = subprocess.Popen([sys.executable, str(SIGNER), "--out", str(sigs), "--threads", "2", "--seconds", "4",
                             "--keep-going"], env=dict(run.env, **signer_env(run)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while count_sigs(sigs) < 20:
        assert proc.poll() is None and time.monotonic() < deadline, "signer did not start signing"
        time.sleep(0.02)
    filler = fill(fs)
    before = run.audit_log.read_bytes()
    time.sleep(1.5)
    filler.unlink()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), before


def test_fail_closed_refuses_signing_and_loses_nothing(token: Token, tiny_fs: Path, tmp_path: Path) -> None:
    run = ShimRun.make(tmp_path / "run", token, conf={"audit": {"on_failure": "fail-closed"}},
                       audit_log=tiny_fs / "audit.jsonl")
    sigs = tmp_path / "sigs.jsonl"
    result, before = sign_through_outage(run, tiny_fs, sigs)
    after = run.audit_log.read_bytes()
    assert after.startswith(before), "records written before the disk filled were lost or changed"
    errors = [json.loads(x)["err"] for x in sigs.read_text().splitlines() if '"err"' in x]
    assert errors, "signing was not refused while the audit log could not be written"
    assert set(errors) <= {"CKR_GENERAL_ERROR"}, errors
    assert "cannot write: No space left on device" in result.stderr, result.stderr
    verified, _ = check_signatures(sigs)
    # every signature handed out has its record; signing resumed after the outage
    recorded = sum(1 for line in after.splitlines() if b'"fn":"C_Sign"' in line and b'"signature_len"' in line
                   and b'"rv":"CKR_OK"' in line)
    assert verified and recorded >= verified
    last = json.loads(sigs.read_text().splitlines()[-1])
    assert "s" in last, f"signing did not recover after the disk was freed: {last}"
    v = audit_cli("verify", str(run.audit_log))
    assert v.returncode == 0, v.stdout
    record_figure("disk_full_fail_closed", {"refused_calls": len(errors), "signatures": verified})


def test_fail_open_keeps_signing_and_counts_the_gap(token: Token, tiny_fs: Path, tmp_path: Path) -> None:
    run = ShimRun.make(tmp_path / "run", token, conf={"audit": {"on_failure": "fail-open"}},
                       audit_log=tiny_fs / "audit.jsonl")
    sigs = tmp_path / "sigs.jsonl"
    result, before = sign_through_outage(run, tiny_fs, sigs)
    assert result.returncode == 0, result.stderr
    assert run.audit_log.read_bytes().startswith(before)
    verified, errors = check_signatures(sigs)
    assert not errors and verified
    assert result.stderr.count("cannot write: No space left on device") == 1, result.stderr
    gaps = [json.loads(x) for x in run.audit_log.read_bytes().splitlines() if b'"kind":"gap"' in x]
    assert len(gaps) == 1 and gaps[0]["args"]["lost"] >= 1, gaps
    r = verify(str(run.audit_log))
    assert r.ok and r.lost_records == gaps[0]["args"]["lost"]
    v = audit_cli("verify", str(run.audit_log))
    assert v.returncode == 0 and "lost in gaps" in v.stdout, v.stdout
    record_figure("disk_full_fail_open", {"lost_records_counted": r.lost_records, "signatures": verified})
