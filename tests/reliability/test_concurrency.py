"""Concurrency: 8 threads x 2 processes sign against one audit file and one token.

Every signature verifies, every signature has its C_Sign record, the chain
verifies, and nothing deadlocks (each process must finish within a timeout).
Duration: 20 s x SC4_RELIABILITY_SCALE.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from rel_helpers import SCALE, SIGNER, ShimRun, Token, audit_cli, check_signatures, record_figure, signer_env
from signer import SHA256_PREFIX

from shim.audit.verify import verify

THREADS, PROCESSES = 8, 2


def test_threads_and_processes_signing_against_one_log(token: Token, tmp_path: Path) -> None:
    seconds = 20 * SCALE
    run = ShimRun.make(tmp_path / "run", token)
    outs = [tmp_path / f"sigs{p}.jsonl" for p in range(PROCESSES)]
    procs = [subprocess.Popen([sys.executable, str(SIGNER), "--out", str(o), "--threads", str(THREADS),
                               "--seconds", str(seconds), "--keys", "ec,rsa"],
                              env=dict(run.env, **signer_env(run)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for o in outs]
    try:
        results = [p.communicate(timeout=seconds + 120) for p in procs]  # a deadlock ends here
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    total = 0
    digests: set[str] = set()
    for o in outs:
        verified, errors = check_signatures(o)
        assert not errors and verified > 0
        total += verified
        for line in o.read_text().splitlines():
            r = json.loads(line)
            if "s" in r:
                d = bytes.fromhex(r["d"])
                digests.add(hashlib.sha256(d if r["k"] == "ec" else SHA256_PREFIX + d).hexdigest())
    r = verify(str(run.audit_log))
    assert r.ok and r.torn is None, r.reason
    assert len(r.epochs) == PROCESSES
    recorded = {json.loads(x)["args"].get("data_sha256") for x in run.audit_log.read_bytes().splitlines()
                if b'"fn":"C_Sign"' in x and b'"signature_len"' in x and b'"rv":"CKR_OK"' in x}
    assert digests <= recorded, f"{len(digests - recorded)} signatures without a record"
    assert audit_cli("verify", str(run.audit_log)).returncode == 0
    record_figure("concurrency", {"processes": PROCESSES, "threads_per_process": THREADS, "seconds": seconds,
                                  "signatures": total, "records": r.records,
                                  "signatures_per_s": round(total / seconds)})
