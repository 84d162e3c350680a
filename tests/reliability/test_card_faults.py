"""Card faults on the virtual PIV card (pcscd + vpcd + OpenSC) behind the shim.

- Removal mid-signature: the signing client gets a clear CKR (device removed /
  session gone), never a crash; after re-insertion a new session signs again;
  every signature verifies and the audit log verifies.
- A hung card (its process stopped with SIGSTOP): measured and documented —
  the shim adds no timeout, so C_Sign blocks until the card answers; meanwhile
  another process keeps appending to the same audit log (the log's lock is never
  held across a backend call), and after SIGCONT the call completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rel_helpers import SIGNER, ShimRun, Token, audit_cli, check_signatures, record_figure, signer_env

# What a removed card may clearly say (PKCS#11 v2.40 5.1.3/5.1.4), and the signer's own reopen errors.
CLEAR = {"CKR_DEVICE_REMOVED", "CKR_SESSION_HANDLE_INVALID", "CKR_SESSION_CLOSED", "CKR_TOKEN_NOT_PRESENT",
         "CKR_DEVICE_ERROR", "CKR_USER_NOT_LOGGED_IN"}


@pytest.fixture
def vcard(card_factory: Any) -> Any:
    vc = card_factory(latency_ms=150)  # each signature takes >= 150 ms: removal lands mid-signature
    yield vc
    vc.stop()


def card_run(vc: Any, tmp_path: Path, audit_log: Path | None = None) -> tuple[ShimRun, dict[str, str]]:
    run = ShimRun.make(tmp_path / "run", Token(vc.info, tmp_path), audit_log=audit_log, own_token=False)
    env = {**signer_env(run), "SIGNER_IDS": f"ec={vc.info.keys['ec'].id.hex()}"}
    return run, env


def sigs_in(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_removal_mid_signature_gives_a_clear_error_and_recovers(vcard: Any, tmp_path: Path) -> None:
    run, env = card_run(vcard, tmp_path)
    sigs = tmp_path / "sigs.jsonl"
    proc = subprocess.Popen([sys.executable, str(SIGNER), "--out", str(sigs), "--seconds", "14", "--keep-going",
                             "--reopen"], env=dict(run.env, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: sum("s" in r for r in sigs_in(sigs)) >= 3, 40, "no signatures before removal")
        vcard.remove()
        time.sleep(1.5)
        vcard.insert()
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 1), f"signer died: {proc.returncode}\n{err[-3000:]}"
    records = sigs_in(sigs)
    errors = [r["err"] for r in records if "err" in r]
    assert errors, "removal went unnoticed"
    unclear = [e for e in errors if e not in CLEAR and not e.startswith("reopen:")]
    assert not unclear, f"unclear errors after card removal: {unclear}"
    last_err = max(i for i, r in enumerate(records) if "err" in r)
    after = [r for r in records[last_err:] if "s" in r]
    assert after, "no signature after re-insertion"
    verified, _ = check_signatures(sigs)
    assert verified >= 4
    v = audit_cli("verify", str(run.audit_log))
    assert v.returncode == 0, v.stdout
    rvs = {r["rv"] for r in run.records() if r["kind"] == "call" and r["fn"] == "C_Sign"}
    assert rvs & CLEAR or any(e.startswith("reopen:") for e in errors), rvs
    record_figure("card_removal", {"errors": sorted(set(errors)), "signatures": verified,
                                   "signatures_after_reinsertion": len(after)})


def test_a_hung_card_blocks_only_its_caller_and_resumes(vcard: Any, token: Token, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    run, env = card_run(vcard, tmp_path / "card", audit_log=audit)
    soft = ShimRun.make(tmp_path / "soft", token, audit_log=audit)
    sigs = tmp_path / "sigs.jsonl"
    pid = vcard.harness.cards[vcard.reader].pid  # the card process this test's fixture started
    proc = subprocess.Popen([sys.executable, str(SIGNER), "--out", str(sigs), "--count", "8"],
                            env=dict(run.env, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hang_s = 8.0
    try:
        wait_for(lambda: sum("s" in r for r in sigs_in(sigs)) >= 2, 40, "card did not sign")
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        n_before = sum("s" in r for r in sigs_in(sigs))
        # Meanwhile another process signs with another token into the same audit log.
        other = soft.python(SIGNER, "--out", str(tmp_path / "soft-sigs.jsonl"), "--count", "20",
                            extra_env=signer_env(soft), timeout=30)
        assert other.returncode == 0
        time.sleep(max(0.0, hang_s - (time.monotonic() - stopped_at)))
        blocked = proc.poll() is None and sum("s" in r for r in sigs_in(sigs)) <= n_before + 1
        os.kill(pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 1), err[-2000:]
    records = sigs_in(sigs)
    verified, errors = check_signatures(sigs)
    v = audit_cli("verify", str(audit))
    assert v.returncode == 0, v.stdout
    assert check_signatures(tmp_path / "soft-sigs.jsonl")[0] == 20
    record_figure("card_hang", {"stopped_s": hang_s, "caller_blocked_while_stopped": blocked,
                                "after_resume": "completed" if not errors else f"errors {sorted(set(errors))}",
                                "card_signatures": verified, "other_process_signatures_meanwhile": 20,
                                "records": len(records)})
