"""Signed checkpoints: with the operator's key and the off-host copy of the checkpoint
file, ``audit verify --key`` proves the log was neither rewritten nor truncated up to the
last checkpoint — even by an attacker who recomputes the whole hash chain."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rel_helpers import SIGNER, ShimRun, Token, audit_cli, record_figure, signer_env

from shim.audit import schema


def rechain_from(lines: list[bytes], start: int) -> list[bytes]:
    out = list(lines[:start])
    for line in lines[start:]:
        r = schema.parse_line(line)
        assert r is not None
        r["prev"] = schema.line_hash(out[-1]) if out else schema.GENESIS
        out.append(schema.encode_line(r))
    return out


@pytest.fixture
def checkpointed(token: Token, tmp_path: Path) -> tuple[ShimRun, Path, Path, int]:
    """Signing, checkpoint, signing, checkpoint, signing; the checkpoint file copied 'off host'."""
    run = ShimRun.make(tmp_path / "run", token)
    keys = tmp_path / "operator"
    assert audit_cli("keygen", str(keys)).returncode == 0
    priv = keys / "checkpoint-ed25519.pem"
    last_cp = 0
    for _ in range(2):
        run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "5", extra_env=signer_env(run))
        cp = audit_cli("checkpoint", str(run.audit_log), "--key", str(priv))
        assert cp.returncode == 0, cp.stderr
        last_cp = int(cp.stdout.split()[2])
    run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "3", extra_env=signer_env(run))
    offhost = tmp_path / "offhost.checkpoints"
    shutil.copy(str(run.audit_log) + ".checkpoints", offhost)
    return run, keys / "checkpoint-ed25519.pub.pem", offhost, last_cp


def verify(log: Path, pub: Path, offhost: Path) -> tuple[int, str]:
    v = audit_cli("verify", str(log), "--key", str(pub), "--checkpoints", str(offhost))
    return v.returncode, v.stdout + v.stderr


def test_intact_checkpointed_log_verifies_with_the_key(checkpointed: tuple[ShimRun, Path, Path, int]) -> None:
    run, pub, offhost, last_cp = checkpointed
    rc, out = verify(run.audit_log, pub, offhost)
    assert rc == 0 and "2 signature(s) verified" in out, out


def test_rewriting_before_the_last_checkpoint_is_proven(checkpointed: tuple[ShimRun, Path, Path, int],
                                                       tmp_path: Path) -> None:
    """Edit seq 5, then recompute every prev after it: the chain is whole again, the checkpoints are not."""
    run, pub, offhost, last_cp = checkpointed
    lines = run.audit_log.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"rv":"CKR_OK"', b'"rv":"CKR_GENERAL_ERROR"', 1)
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(rechain_from(lines, 4)))
    plain = audit_cli("verify", str(forged))
    assert plain.returncode != 0 or "checkpoint" in plain.stdout  # the in-log checkpoints still break
    rc, out = verify(forged, pub, offhost)
    assert rc == 1 and "first bad record: seq " in out, out
    bad = int(out.split("first bad record: seq ")[1].split(":")[0])
    assert bad <= last_cp, out


def test_truncation_before_the_last_checkpoint_is_proven(checkpointed: tuple[ShimRun, Path, Path, int],
                                                        tmp_path: Path) -> None:
    run, pub, offhost, last_cp = checkpointed
    lines = run.audit_log.read_bytes().splitlines(keepends=True)
    cases = 0
    for keep in (last_cp - 1, last_cp - 10, 3):
        cut = tmp_path / f"cut{keep}.jsonl"
        cut.write_bytes(b"".join(lines[:keep]))
        rc, out = verify(cut, pub, offhost)
        assert rc == 1 and "truncated" in out, out
        cases += 1
    # and a truncated log whose last checkpoint was also removed from the detached copy on the host
    # is still caught by the off-host copy; after the last checkpoint only the chain protects
    tail_cut = tmp_path / "tailcut.jsonl"
    tail_cut.write_bytes(b"".join(lines[:last_cp + 1]))
    rc, out = verify(tail_cut, pub, offhost)
    assert rc == 0 and "hash chain only" in out, out
    record_figure("checkpoints", {"truncations_proven": cases, "checkpoints": 2})


def test_a_checkpoint_signed_by_another_key_is_rejected(checkpointed: tuple[ShimRun, Path, Path, int],
                                                        tmp_path: Path) -> None:
    """An attacker appends a checkpoint over a rewritten head with their own key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from shim.audit import signing
    from shim.audit.writer import AuditWriter

    run, pub, offhost, last_cp = checkpointed
    forged = tmp_path / "forged.jsonl"
    shutil.copy(run.audit_log, forged)
    attacker = Ed25519PrivateKey.generate()

    def make_args(seq: int, prev: str) -> dict[str, object]:
        args: dict[str, object] = {"head_seq": seq - 1, "head_sha256": prev, "signed_at": "2026-01-01T00:00:00Z",
                                   "key_id": signing.key_id(attacker.public_key()), "alg": signing.ALG}
        args["sig"] = signing.sign(attacker, args)
        return args

    with AuditWriter(str(forged), program="sc4dnssec-audit") as w:
        written = w.write_bound("checkpoint", make_args)
    assert written is not None
    rc, out = verify(forged, pub, offhost)
    assert rc == 1 and f"first bad record: seq {written[0]}" in out, out
