"""The test vectors: sc4dnssec's verifier and the independent one (written from
docs/audit-format.md) give every vector the verdict the specification gives it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import independent_verifier
import pytest
from audit_helpers import run_cli

from shim.audit import signing
from shim.audit.verify import verify

VECTORS = Path(__file__).resolve().parent / "vectors"
CASES: list[dict[str, Any]] = json.loads((VECTORS / "vectors.json").read_text())["vectors"]
KEY = VECTORS / "vector-key.pub.pem"


def test_the_vectors_cover_every_verdict() -> None:
    assert {c["exit"] for c in CASES} == {0, 1, 3, 4, 5}
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_both_verifiers_agree_with_the_specification(case: dict[str, Any]) -> None:
    log = VECTORS / case["file"]
    cps = str(VECTORS / case["checkpoints"]) if case["checkpoints"] else os.devnull
    r = verify(str(log), key=signing.load_public(str(KEY)) if case["key"] else None, checkpoints=cps,
               require_checkpoint=case["require_checkpoint"])
    assert (r.exit_code, r.first_bad_seq) == (case["exit"], case["first_bad_seq"]), r.reason
    ind = independent_verifier.verify(str(log), cps, str(KEY) if case["key"] else None, case["require_checkpoint"])
    assert (ind.exit, ind.seq) == (case["exit"], case["first_bad_seq"]), ind.why


@pytest.mark.parametrize("case", [c for c in CASES if c["exit"] != 0][:12], ids=lambda c: c["name"])
def test_the_command_line_gives_the_same_exit_code(case: dict[str, Any]) -> None:
    argv = ["verify", str(VECTORS / case["file"]),
            "--checkpoints", str(VECTORS / case["checkpoints"]) if case["checkpoints"] else os.devnull]
    if case["key"]:
        argv += ["--key", str(KEY)]
    if case["require_checkpoint"]:
        argv.append("--require-checkpoint")
    out = run_cli(*argv)
    assert out.returncode == case["exit"], out.stdout + out.stderr
    if case["first_bad_seq"] is not None and case["exit"] == 1:
        assert f"first bad record: seq {case['first_bad_seq']}: " in out.stdout
