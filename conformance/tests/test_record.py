"""A real consumer through the shim -> its audit log -> a sequence -> replayed on the card."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conformance.client import Worker
from conformance.record import convert
from conformance.replay import instantiate, judge
from conformance.sequence import dump, load, read_records
from shim.locate import module_path


@pytest.mark.parametrize("kind,mech", [("ec", "ECDSA"), ("rsa", "RSA-PKCS")])
def test_a_recorded_pkcs11_tool_run_replays(kind: str, mech: str, card: Any, shim: Worker,
                                            shim_audit: tuple[dict[str, str], Path], bindings: dict[str, Any],
                                            tmp_path: Path) -> None:
    if shutil.which("pkcs11-tool") is None or kind not in card.keys:
        pytest.skip("pkcs11-tool or key missing")
    env, _ = shim_audit
    audit = tmp_path / "audit.jsonl"
    env = dict(env, SC4DNSSEC_AUDIT_LOG=str(audit))
    data = tmp_path / "data"
    data.write_bytes(bytes(range(32)))
    key = card.keys[kind]
    proc = subprocess.run(["pkcs11-tool", "--module", module_path(), "--token-label", card.token_label, "--login",
                    "--pin", card.pin, "--sign", "-m", mech, "--id", key.id.hex(), "-i", str(data),
                    "-o", str(tmp_path / "sig")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seq = convert(list(read_records(audit)), {kind: (key.label, key.id.hex())}, "recorded")
    assert any(s.fn == "C_Sign" for s in seq.steps)
    assert f"\"{card.pin}\"" not in str(seq.steps)  # no PIN reaches a sequence
    dump(seq, tmp_path / "recorded.jsonl")
    seq = load(tmp_path / "recorded.jsonl")
    steps = instantiate(seq)
    outcome = judge(seq, steps, shim.run(steps), bindings)
    assert not outcome.failures, outcome.summary()
