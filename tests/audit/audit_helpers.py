"""Helpers for the audit tests: real logs on disk, and the edits an attacker would make.

A uniquely named module (not conftest) so test files can import it without
clashing with other test directories' conftest modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from shim.audit import schema
from shim.audit.writer import AuditWriter

ROOT = Path(__file__).resolve().parents[2]


def write_calls(w: AuditWriter, n: int, start: int = 0, fn: str = "C_Sign") -> None:
    for i in range(start, start + n):
        w.write("call", fn=fn, args={"session": 1, "i": i, "data_len": 32}, rv="CKR_OK", dur_us=i, src="card")


def read_lines(path: Path) -> list[bytes]:
    """The file's lines, each with its newline (the last one may lack it)."""
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def rec(line: bytes) -> dict[str, Any]:
    r = schema.parse_line(line)
    assert r is not None
    return r


def enc(record: dict[str, Any]) -> bytes:
    return schema.encode_line(record)


def rechain(lines: list[bytes], start: int) -> list[bytes]:
    """Recompute ``prev`` from index ``start`` on, as an attacker rewriting the chain would."""
    out = list(lines[:start])
    for line in lines[start:]:
        r = rec(line)
        r["prev"] = schema.line_hash(out[-1]) if out else schema.GENESIS
        out.append(enc(r))
    return out


def two_process_log(path: Path) -> tuple[int, int]:
    """30 records: seq 1-10 this process, 11-20 a forked child, 21-30 this process again.

    Returns (parent pid, child pid).
    """
    w = AuditWriter(str(path), program="named")
    write_calls(w, 10)
    pid = os.fork()
    if pid == 0:  # child: its writer got a new epoch and descriptor from the at-fork hook
        try:
            write_calls(w, 10, 10)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    write_calls(w, 10, 20)
    w.close()
    return os.getpid(), pid


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "shim.audit.cli", *argv], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def dump(records: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(r) for r in records)
