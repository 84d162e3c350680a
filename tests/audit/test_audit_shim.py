"""The audit file rules through the real module: PyKCS11 signing via the shim over SoftHSM, with a
planted log file, a device as the log, and a log renamed and re-created (logrotate "create") while
the signer runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_helpers import ROOT, read_lines, rec

from shim.audit.verify import verify_files
from shim.locate import module_path
from virtualcard.pytest_plugin import CardInfo, make_softhsm

SIGNER = ROOT / "tests" / "reliability" / "signer.py"


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> CardInfo:
    return make_softhsm(tmp_path_factory.mktemp("audit-softhsm"))


def signer(card: CardInfo, log: str, work: Path, *args: str, on_failure: str = "fail-closed",
           background: bool = False) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    conf = work / "sc4dnssec.toml"
    conf.write_text(f'[audit]\non_failure = "{on_failure}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SC4DNSSEC_")}
    env.update(card.env, SC4DNSSEC_BACKEND=card.module, SC4DNSSEC_AUDIT_LOG=log, SC4DNSSEC_CONF=str(conf),
               P11_MODULE=module_path(), P11_PIN=card.pin,
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    argv = [sys.executable, str(SIGNER), "--out", str(work / "sigs.jsonl"), *args]
    if background:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_a_planted_symlink_as_the_log_refuses_signing_and_leaves_its_target(card: CardInfo, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    log = tmp_path / "audit.jsonl"
    log.symlink_to(target)
    out = signer(card, str(log), tmp_path, "--count", "1")
    assert isinstance(out, subprocess.CompletedProcess)
    assert out.returncode != 0 and "symbolic link" in out.stderr, out.stderr
    assert target.read_text() == "precious\n"


def test_dev_null_as_the_log_refuses_signing_fail_closed(card: CardInfo, tmp_path: Path) -> None:
    out = signer(card, os.devnull, tmp_path, "--count", "1")
    assert isinstance(out, subprocess.CompletedProcess)
    assert out.returncode != 0 and "not a regular file" in out.stderr, out.stderr


def test_dev_null_as_the_log_under_fail_open_signs_and_says_so(card: CardInfo, tmp_path: Path) -> None:
    out = signer(card, os.devnull, tmp_path, "--count", "2", on_failure="fail-open")
    assert isinstance(out, subprocess.CompletedProcess)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("not a regular file") == 1  # reported once per outage


def test_logrotate_create_during_signing_continues_the_chain_in_the_new_file(card: CardInfo,
                                                                              tmp_path: Path) -> None:
    log, old = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    proc = signer(card, str(log), tmp_path, "--seconds", "4", background=True)
    assert isinstance(proc, subprocess.Popen)
    while not log.exists() or len(read_lines(log)) < 50:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    os.rename(log, old)
    os.close(os.open(log, os.O_CREAT | os.O_WRONLY, 0o640))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    new = read_lines(log)
    assert new, "the writer kept appending to the renamed file"
    link = rec(new[0])
    assert link["kind"] == "link" and "format" in link
    results = verify_files([str(old), str(log)])
    assert all(r.ok and r.exit_code == 0 for r in results), [r.reason for r in results]
    assert results[1].first_seq == link["args"]["old_head_seq"] + 1
    assert len(read_lines(old)) >= link["args"]["old_head_seq"]
