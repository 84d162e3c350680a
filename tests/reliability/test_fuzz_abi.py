"""Bad input never crashes the host: hypothesis call lists against the module's C ABI.

Each example runs one call list in a fresh child process (ctypes, fuzz_child.py)
over its own copy of a SoftHSM token, through the shim.  The child must exit
normally (a signal or a hang is a failure and the call list is saved as the
reproducer), every returned CKR must be one PKCS#11 v2.40 allows for that
function (shim/spec.py) or a backend quirk named in sc4testkit/quirks.py, every
call must leave exactly one audit record, and the audit log must verify afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fuzz_calls import call_lists
from hypothesis import HealthCheck, given, settings
from rel_helpers import HERE, ShimRun, Token, audit_cli, record_figure, scaled

from sc4testkit.quirks import violation
from sc4testkit.tokens import TOKENS
from shim.constants import CKR, name_of

CHILD = HERE / "fuzz_child.py"
TOTALS = {"examples": 0, "calls": 0, "functions": set()}  # type: dict[str, Any]


def run_calls(token: Token, work: Path, calls: list[Any], reproducers: Path) -> list[tuple[int, str, int]]:
    """Run ``calls`` in a child; on a crash or hang save the reproducer and fail."""
    run = ShimRun.make(work, token)
    (work / "calls.json").write_text(json.dumps(calls))
    results = work / "results.jsonl"
    cmd = [str(CHILD), run.module, str(work / "calls.json"), str(results)]
    try:
        proc = run.python(Path(cmd[0]), *cmd[1:], timeout=60, check=False)
        problem = None if proc.returncode == 0 else (
            f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
            else f"exit {proc.returncode}") + f"\n{proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired:
        problem = "hung for 60 s"
    done = [tuple(json.loads(x)) for x in results.read_text().splitlines()] if results.exists() else []
    if problem is not None:
        reproducers.mkdir(parents=True, exist_ok=True)
        path = reproducers / f"crash-{len(list(reproducers.iterdir()))}.json"
        path.write_text(json.dumps(calls, indent=1))
        last = calls[len(done)] if len(done) < len(calls) else None
        pytest.fail(f"module process {problem}\nlast call started: {json.dumps(last)}\n"
                    f"reproducer ({len(calls)} calls) saved to {path}:\n{json.dumps(calls)}")
    assert len(done) == len(calls)
    # One audit record per call, and the log verifies.
    fns = [r["fn"] for r in run.records() if r["kind"] == "call"]
    assert fns == [c[0] for c in calls], "audit records do not match the calls made"
    v = audit_cli("verify", str(run.audit_log))
    assert v.returncode == 0, v.stdout + v.stderr
    return done  # type: ignore[return-value]


@settings(max_examples=scaled(250), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(calls=call_lists("123456", 40))
def test_no_call_list_crashes_the_host_or_returns_a_forbidden_ckr(token: Token, tmp_path: Path,
                                                                   calls: list[Any]) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    done = run_calls(token, work, calls, tmp_path / "reproducers")
    TOTALS["examples"] += 1
    TOTALS["calls"] += len(done)
    TOTALS["functions"] |= {fn for _, fn, _ in done}
    bad = [(i, fn, name_of(CKR, rv)) for i, fn, rv in done if violation(fn, rv, TOKENS[token.info.kind].module)]
    assert not bad, f"CKRs PKCS#11 v2.40 does not allow: {bad}\ncalls: {json.dumps(calls)}"


def test_record_fuzz_figures() -> None:
    """Runs after the fuzz test (file order): the figures for the README's Reliability section."""
    if TOTALS["examples"]:
        record_figure("fuzz", {"examples": TOTALS["examples"], "calls": TOTALS["calls"],
                               "functions_called": len(TOTALS["functions"])})
