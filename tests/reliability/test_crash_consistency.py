"""Crash consistency: SIGKILL a signing process at random points, many times, against one log.

After every kill: ``sc4dnssec audit verify`` accepts every complete record
(exit 0, or 3 naming a torn last line), nothing written before is changed
(the log before the kill is a prefix of the log after it), and every signature
the client received has its C_Sign record (records are written before the call
returns).  Then cuts of the log at random byte offsets: a cut inside a line is
reported as torn, never as intact, and a cut before a signed checkpoint is
reported as truncation.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from rel_helpers import SIGNER, ShimRun, Token, audit_cli, check_signatures, record_figure, scaled, signer_env
from signer import SHA256_PREFIX


def signed_digests(path: Path) -> set[str]:
    out = set()
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "s" in r:  # what C_Sign was given: the digest, or the DigestInfo for RSA
            data = bytes.fromhex(r["d"]) if r["k"] == "ec" else SHA256_PREFIX + bytes.fromhex(r["d"])
            out.add(hashlib.sha256(data).hexdigest())
    return out


def _wait_for_growth(path: Path, *, size_before: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the signer has appended to its signature file (or has exited on its own)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.stat().st_size > size_before:
            return
        time.sleep(0.02)


def test_sigkill_at_random_points_never_loses_or_corrupts_a_record(token: Token, tmp_path: Path) -> None:
    run = ShimRun.make(tmp_path / "run", token)
    sigs = tmp_path / "sigs.jsonl"
    rng = random.Random()
    runs, torn_seen = scaled(25), 0
    before = b""
    for k in range(runs):
        proc = subprocess.Popen([sys.executable, str(SIGNER), "--out", str(sigs), "--threads", "2",
                                 "--seconds", "60", "--keys", "ec,rsa"],
                                env=dict(run.env, **signer_env(run)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if k % 3 == 0:
            time.sleep(rng.uniform(0.0, 0.5))  # during start-up, or whatever it reached
        else:
            # Mid-signing, whatever the machine's load: once this run has returned a signature.
            _wait_for_growth(sigs, size_before=sigs.stat().st_size if sigs.exists() else 0, proc=proc)
            time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"kill run {k}: signer failed first: {err.decode()[-2000:]}"
        after = run.audit_log.read_bytes() if run.audit_log.exists() else b""
        assert after.startswith(before), f"kill run {k}: bytes written before were changed"
        before = after
        if not after:
            continue  # killed before the shim wrote its first record: nothing to verify yet
        v = audit_cli("verify", str(run.audit_log))
        assert v.returncode in (0, 3), f"kill run {k}: {v.stdout}{v.stderr}"
        if v.returncode == 3:
            torn_seen += 1
            assert "torn last line" in v.stdout
    # Every signature a client got back is in the log (durable before the call returned).
    recorded = {r["args"].get("data_sha256") for r in run.records()
                if r["kind"] == "call" and r["fn"] == "C_Sign" and r["rv"] == "CKR_OK"}
    got = signed_digests(sigs)
    assert got and got <= recorded, f"{len(got - recorded)} signatures without a C_Sign record"
    verified, errors = check_signatures(sigs)
    assert not errors and verified == len(got)
    final = audit_cli("verify", "-v", str(run.audit_log))
    assert final.returncode in (0, 3), final.stdout
    record_figure("crash_consistency", {"kill_runs": runs, "signatures_recorded": len(got),
                                        "records": run.audit_log.read_bytes().count(b"\n"),
                                        "torn_after_kill": torn_seen})


def test_cut_logs_are_never_accepted_as_whole(token: Token, tmp_path: Path) -> None:
    run = ShimRun.make(tmp_path / "run", token)
    sigs = tmp_path / "sigs.jsonl"
    run.python(SIGNER, "--out", str(sigs), "--count", "20", extra_env=signer_env(run))
    keydir = tmp_path / "keys"
    assert audit_cli("keygen", str(keydir)).returncode == 0
    cp = audit_cli("checkpoint", str(run.audit_log), "--key", str(keydir / "checkpoint-ed25519.pem"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    run.python(SIGNER, "--out", str(sigs), "--count", "10", extra_env=signer_env(run))
    data = run.audit_log.read_bytes()
    detached = Path(str(run.audit_log) + ".checkpoints")
    assert detached.exists()
    cp_end = data.index(b'"kind":"checkpoint"')
    cp_end = data.index(b"\n", cp_end) + 1
    rng = random.Random()
    cuts = sorted({rng.randrange(1, len(data)) for _ in range(scaled(40))} | {cp_end - 1, cp_end})
    outcomes = {"torn": 0, "truncated": 0, "intact_after_checkpoint": 0}
    for cut in cuts:
        cut_log = tmp_path / "cut.jsonl"
        cut_log.write_bytes(data[:cut])
        v = audit_cli("verify", str(cut_log), "--checkpoints", str(detached),
                      "--key", str(keydir / "checkpoint-ed25519.pub.pem"))
        mid_line = data[cut - 1:cut] != b"\n"
        if cut < cp_end:
            # Whatever the cut, the checkpointed head is gone: truncation, never intact.
            assert v.returncode == 1 and "truncated" in v.stdout, (cut, v.stdout)
            outcomes["truncated"] += 1
        elif mid_line:
            assert v.returncode == 3 and "torn last line" in v.stdout, (cut, v.stdout)
            outcomes["torn"] += 1
        else:
            # A cut at a line boundary after the last checkpoint: the hash chain alone
            # cannot see it; verify says which records only the chain protects.
            assert v.returncode == 0 and (cut == cp_end or "hash chain only" in v.stdout), (cut, v.stdout)
            outcomes["intact_after_checkpoint"] += 1
    record_figure("log_cuts", {"cuts": len(cuts), **outcomes})
