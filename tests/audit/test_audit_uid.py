"""The uid of a record is the process's uid when it was written, not when the epoch began:
named loads the module as root and drops to its own user afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

DROPS = r"""
import os, sys
from shim.audit.writer import AuditWriter
w = AuditWriter(sys.argv[1], program="named")
w.write("call", fn="C_Initialize", args={}, rv="CKR_OK", dur_us=1)   # as root, like named at start
os.setgid(65534); os.setuid(65534)                                   # named -u bind
w.write("call", fn="C_Sign", args={}, rv="CKR_OK", dur_us=1)
w.write("load", args={"after": "drop"})
"""


def test_records_after_a_privilege_drop_carry_the_new_uid() -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    d = Path(tempfile.mkdtemp(prefix="sc4-uid-", dir="/tmp"))  # the dropped user must reach it
    try:
        os.chown(d, 65534, 65534)
        _check(d / "audit.jsonl")
    finally:
        shutil.rmtree(d)


def _check(log: Path) -> None:
    subprocess.run([sys.executable, "-c", DROPS, str(log)], check=True, cwd=Path(__file__).parents[2],
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["uid"] for r in recs] == [0, 65534, 65534]
    assert len({r["epoch"] for r in recs}) == 2  # an epoch is one (pid, uid, prog)
    assert "format" in recs[1]  # the new epoch says its format version
    from shim.audit.verify import verify
    res = verify(str(log))
    assert res.ok, res.reason
