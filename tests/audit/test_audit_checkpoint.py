"""Signed checkpoints: sign, verify, and catch what a bare chain cannot (rewrite, truncation)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from audit_helpers import enc, read_lines, rec, rechain, run_cli, write_calls, write_lines

from shim.audit import schema, signing
from shim.audit.checkpoint import CheckpointRefused, checkpoint
from shim.audit.verify import verify
from shim.audit.writer import AuditWriter


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    out = run_cli("keygen", str(tmp_path / "keys"))
    assert out.returncode == 0, out.stderr
    priv, pub = tmp_path / "keys" / "checkpoint-ed25519.pem", tmp_path / "keys" / "checkpoint-ed25519.pub.pem"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    return priv, pub


@pytest.fixture
def checkpointed(log: Path, keys: tuple[Path, Path]) -> Path:
    """20 calls, a checkpoint (seq 21), 5 more calls, a checkpoint (seq 27), 3 more calls."""
    w = AuditWriter(str(log))
    write_calls(w, 20)
    assert run_cli("checkpoint", str(log), "--key", str(keys[0])).returncode == 0
    write_calls(w, 5, 20)
    assert run_cli("checkpoint", str(log), "--key", str(keys[0])).returncode == 0
    write_calls(w, 3, 25)
    w.close()
    return log


def test_keygen_never_overwrites(keys: tuple[Path, Path]) -> None:
    before = keys[0].read_bytes()
    assert run_cli("keygen", str(keys[0].parent)).returncode == 2
    assert keys[0].read_bytes() == before


def test_checkpoints_are_chained_signed_and_verify(checkpointed: Path, keys: tuple[Path, Path]) -> None:
    lines = read_lines(checkpointed)
    cp = rec(lines[20])
    assert cp["kind"] == "checkpoint" and cp["seq"] == 21
    assert cp["args"]["head_seq"] == 20 and cp["args"]["head_sha256"] == cp["prev"]
    entries = signing.read_checkpoints(str(checkpointed) + ".checkpoints")
    assert [e["seq"] for e in entries] == [21, 27]
    r = verify(str(checkpointed), key=signing.load_public(str(keys[1])))
    assert r.ok and r.checkpoints == 2 and r.checkpoints_verified == 2 and r.last_checkpoint_seq == 27
    out = run_cli("verify", str(checkpointed), "--key", str(keys[1]))
    assert out.returncode == 0 and "2 signature(s) verified" in out.stdout


def test_wrong_key_fails(checkpointed: Path, tmp_path: Path) -> None:
    priv, pub = signing.keygen(str(tmp_path / "other"))
    out = run_cli("verify", str(checkpointed), "--key", pub)
    assert out.returncode == 1 and "first bad record: seq 21: checkpoint signed by key" in out.stdout


def test_forged_signature_fails(checkpointed: Path, keys: tuple[Path, Path]) -> None:
    lines = read_lines(checkpointed)
    cp = rec(lines[26])
    cp["args"]["sig"] = cp["args"]["sig"][:10] + ("A" if cp["args"]["sig"][10] != "A" else "B") + \
        cp["args"]["sig"][11:]
    lines[26] = enc(cp)
    write_lines(checkpointed, rechain(lines, 27))
    r = verify(str(checkpointed), key=signing.load_public(str(keys[1])))
    assert not r.ok and r.first_bad_seq == 27 and "signature is invalid" in (r.reason or "")


def test_rewritten_chain_is_caught_only_with_the_key(checkpointed: Path, keys: tuple[Path, Path]) -> None:
    lines = read_lines(checkpointed)
    r3 = rec(lines[2])
    r3["rv"] = "CKR_FUNCTION_FAILED"
    lines[2] = enc(r3)
    lines = rechain(lines, 3)
    for i in (20, 26):  # the attacker also updates the checkpoints' heads: the signatures no longer fit
        cp = rec(lines[i])
        cp["args"]["head_sha256"] = cp["prev"]
        lines[i] = enc(cp)
        lines = rechain(lines, i + 1)
    write_lines(checkpointed, lines)
    Path(str(checkpointed) + ".checkpoints").rename(str(checkpointed) + ".offhost")
    assert verify(str(checkpointed)).ok  # the documented limit of a bare chain
    r = verify(str(checkpointed), key=signing.load_public(str(keys[1])))
    assert not r.ok and r.first_bad_seq == 21
    r = verify(str(checkpointed), checkpoints=str(checkpointed) + ".offhost")
    assert not r.ok and "rewritten" in (r.reason or "")


def test_truncation_before_the_last_checkpoint_is_detected(checkpointed: Path,
                                                           keys: tuple[Path, Path]) -> None:
    lines = read_lines(checkpointed)
    write_lines(checkpointed, lines[:24])  # cut inside the span covered by the checkpoint at seq 27
    out = run_cli("verify", str(checkpointed), "--key", str(keys[1]))
    assert out.returncode == 1
    assert "first bad record: seq 25: log ends at seq 24" in out.stdout and "truncated" in out.stdout
    # ...even after new records were appended to the truncated log: the chain alone looks fine.
    w = AuditWriter(str(checkpointed))
    write_calls(w, 10)
    w.close()
    r = verify(str(checkpointed), key=signing.load_public(str(keys[1])))
    assert not r.ok and "differs from the checkpoint" in (r.reason or "")


def test_truncation_right_after_the_checkpointed_head_is_detected(checkpointed: Path) -> None:
    lines = read_lines(checkpointed)
    write_lines(checkpointed, lines[:26])  # keeps head seq 26, drops the checkpoint record 27
    r = verify(str(checkpointed))
    assert not r.ok and r.first_bad_seq == 27 and "truncated" in (r.reason or "")


def test_checkpoint_refuses_a_tampered_log(log: Path, keys: tuple[Path, Path]) -> None:
    w = AuditWriter(str(log))
    write_calls(w, 5)
    w.close()
    lines = read_lines(log)
    del lines[2]
    write_lines(log, lines)
    with pytest.raises(CheckpointRefused, match="seq 3"):
        checkpoint(str(log), signing.load_private(str(keys[0])))
    out = run_cli("checkpoint", str(log), "--key", str(keys[0]))
    assert out.returncode == 1 and "refused" in out.stderr
    assert read_lines(log) == lines


def test_detached_entries_carry_the_signed_head(checkpointed: Path, keys: tuple[Path, Path]) -> None:
    pub = signing.load_public(str(keys[1]))
    lines = read_lines(checkpointed)
    for line in Path(str(checkpointed) + ".checkpoints").read_text().splitlines():
        e = json.loads(line)
        assert signing.signature_error(pub, e) is None
        assert e["line_sha256"] == schema.line_hash(lines[e["seq"] - 1])
        assert e["head_sha256"] == schema.line_hash(lines[e["head_seq"] - 1])
