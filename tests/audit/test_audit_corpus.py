"""The corpus: real logs of every released format version, and an upgrade between them, still verify
(with their checkpoints and the operator's key); each tampered copy fails with the right record named,
by sc4dnssec's verifier and by the independent one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import independent_verifier
import pytest
from audit_helpers import run_cli

from shim.audit import schema, signing
from shim.audit.archive import export, verify_manifest
from shim.audit.verify import verify

CORPUS = Path(__file__).resolve().parent / "corpus"
LOGS = sorted(p.parent for p in CORPUS.glob("*/expected.json"))
CASES = [(d, c) for d in LOGS for c in json.loads((d / "expected.json").read_text())["cases"]]


def expected(d: Path) -> dict[str, Any]:
    return dict(json.loads((d / "expected.json").read_text()))


def test_the_corpus_has_every_released_version_and_an_upgrade() -> None:
    versions = {v for d in LOGS for v in expected(d)["format_versions"]}
    assert versions == set(schema.SUPPORTED_VERSIONS)
    assert any(len(expected(d)["format_versions"]) > 1 for d in LOGS)
    assert all(any(c["exit"] == 1 for c in json.loads((d / "expected.json").read_text())["cases"]) for d in LOGS)


@pytest.mark.parametrize("d", LOGS, ids=lambda d: d.name)
def test_each_real_log_verifies_with_its_checkpoints_and_key(d: Path) -> None:
    e = expected(d)
    key = d / e["key"]
    r = verify(str(d / e["log"]), key=signing.load_public(str(key)), checkpoints=str(d / e["checkpoints"]),
               require_checkpoint=True)
    assert r.exit_code == 0, r.reason
    assert (r.records, r.last_seq, r.head) == (e["records"], e["last_seq"], e["head_sha256"])
    assert [list(x) for x in r.version_starts] == e["version_starts"]
    assert r.checkpoints_verified >= 2
    out = run_cli("verify", str(d / e["log"]), "--key", str(key), "--checkpoints", str(d / e["checkpoints"]),
                  "--require-checkpoint")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("d,case", CASES, ids=[f"{d.name}/{c['file']}" for d, c in CASES])
def test_each_copy_gets_its_verdict_from_both_verifiers(d: Path, case: dict[str, Any]) -> None:
    e = expected(d)
    log, cps, key = d / case["file"], d / e["checkpoints"], d / e["key"]
    r = verify(str(log), key=signing.load_public(str(key)), checkpoints=str(cps))
    assert (r.exit_code, r.first_bad_seq) == (case["exit"], case["first_bad_seq"]), r.reason
    bare = verify(str(log), checkpoints=os.devnull)
    assert (bare.exit_code, bare.first_bad_seq) == (case["exit_without_checkpoints"],
                                                    case["first_bad_seq_without_checkpoints"])
    ind = independent_verifier.verify(str(log), str(cps), str(key))
    assert (ind.exit, ind.seq) == (case["exit"], case["first_bad_seq"]), ind.why
    if case["file"] != e["log"]:
        assert case["exit"] == 1  # every tampered copy fails with its checkpoints


@pytest.mark.parametrize("d", LOGS, ids=lambda d: d.name)
def test_each_real_log_survives_export_and_verifies_from_the_archive_alone(d: Path, tmp_path: Path) -> None:
    e = expected(d)
    key = signing.load_public(str(d / e["key"]))
    m = export(str(d / e["log"]), str(tmp_path / "archive"), checkpoints=str(d / e["checkpoints"]), key=key)
    assert m["log"]["head_sha256"] == e["head_sha256"] and m["log"]["format_versions"] == e["format_versions"]
    res = verify_manifest(str(tmp_path / "archive"), key=key, require_checkpoint=True)
    assert res.exit_code == 0 and not res.problems
