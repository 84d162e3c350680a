"""The card pool over virtual PIV cards with the same keys: presentation, signing, failover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from sc4testkit.pool import PIN, PoolCards, pool_shim
from sc4testkit.pool import pool_events as _events
from sc4testkit.shimenv import ShimProcesses
from virtualcard.state import CardState

REPO = Path(__file__).resolve().parents[2]


def _ec_key(cards: PoolCards, name: str) -> ec.EllipticCurvePublicKey:
    private = CardState(cards.states[name]).get_key(0x9A)
    assert private is not None
    key = private.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _verify(key: ec.EllipticCurvePublicKey, line: dict) -> None:
    sig = bytes.fromhex(line["sig"])
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    key.verify(utils.encode_dss_signature(r, s), bytes.fromhex(line["digest"]),
               ec.ECDSA(utils.Prehashed(hashes.SHA256())))


class Signer:
    """tests/pool/signer.py in the shim's environment, one batch at a time."""

    def __init__(self, shim: ShimProcesses, threads: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.pool.signer", shim.module, "dnssec pool", PIN, str(threads)],
            env={**shim.env, "PYTHONPATH": str(REPO)}, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.results: list[dict[str, Any]] = []
        assert self._line() == {"ready": True}

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=60)
            raise AssertionError(f"signer ended ({self.proc.returncode}): {err}")
        return dict(json.loads(line))

    def batch(self, n: int) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        out = []
        while "batch" not in (rec := self._line()):
            out.append(rec)
        self.results += out
        return out

    def close(self) -> None:
        _, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err


def _wait_for(shim: ShimProcesses, event: str, member: str, count: int = 1) -> None:
    """Until the audit log has ``count`` such pool events (an abandoned call answers in the card's
    own time; a rejoin runs in the member's worker)."""
    for _ in range(600):
        if sum(e.get("member") == member for e in _pool_events(shim, event)) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event} of {member}: {_pool_events(shim)}")


def test_pkcs11_tool_sees_one_token_and_signs_through_the_pool(pool_cards: PoolCards, tmp_path: Path) -> None:
    shim = pool_shim(tmp_path, pool_cards, ["a", "b"])
    listing = shim.run(["pkcs11-tool", "--module", shim.module, "-L"]).stdout
    assert listing.count("token label") == 1, listing
    assert "dnssec pool" in listing and "pool0001" in listing
    data = tmp_path / "digest"
    data.write_bytes(bytes(range(32)))
    sig = tmp_path / "sig"
    shim.run(["pkcs11-tool", "--module", shim.module, "-l", "--pin", PIN, "--sign", "-m", "ECDSA", "--id", "01",
              "-i", str(data), "-o", str(sig)])
    _verify(_ec_key(pool_cards, "a"), {"sig": sig.read_bytes().hex(), "digest": data.read_bytes().hex()})
    joins = _pool_events(shim, "join")
    assert {j["member"] for j in joins} >= {"a", "b"}
    signs = shim.calls("C_Sign")
    assert signs and all(r["args"]["member"] in ("a", "b") for r in signs), signs


def test_a_member_pulled_mid_run_is_failed_over(pool_cards: PoolCards, tmp_path: Path) -> None:
    shim = pool_shim(tmp_path, pool_cards, ["a", "b", "c"], timeout_ms=2000)
    key = _ec_key(pool_cards, "a")
    signer = Signer(shim, threads=3)
    signer.batch(6)
    b = pool_cards.readers["b"]
    pool_cards.harness.remove(b)
    try:
        signer.batch(30)
    finally:
        pool_cards.harness.insert(b)
    signer.close()
    results = signer.results
    assert sorted(r["n"] for r in results) == list(range(36))
    assert [r for r in results if "error" in r] == []
    for r in results:
        _verify(key, r)
    # a pulled virtual card leaves OpenSC's call in flight waiting (no answer): timeout, or leave
    gone = [e for e in _pool_events(shim) if e["pool"] in ("leave", "timeout") and e["member"] == "b"]
    assert gone, _pool_events(shim)
    failovers = [r for r in shim.calls() if r["args"].get("failover")]
    assert failovers
    for r in failovers:
        assert r["rv"] == "CKR_OK" and r["args"]["member"] in ("a", "c"), r


def test_a_member_pulled_between_signatures_leaves_and_rejoins_after_reinsertion(pool_cards: PoolCards,
                                                                                 tmp_path: Path) -> None:
    shim = pool_shim(tmp_path, pool_cards, ["a", "b"], timeout_ms=3000)
    key = _ec_key(pool_cards, "a")
    signer = Signer(shim)
    signer.batch(4)
    b = pool_cards.readers["b"]
    pool_cards.harness.remove(b)
    try:
        signer.batch(4)
        assert [e["member"] for e in _pool_events(shim) if e["pool"] in ("leave", "timeout")] == ["b"]
    finally:
        pool_cards.harness.insert(b)
    for _ in range(600):  # each signature is a routing decision: the member that left is asked again
        signer.batch(1)
        if sum(e["member"] == "b" for e in _pool_events(shim, "join")) == 2:
            break
    else:
        raise AssertionError(f"b did not rejoin: {_pool_events(shim)}")
    mark = len(shim.calls("C_Sign"))
    signer.batch(4)
    signer.close()
    assert [r for r in signer.results if "error" in r] == []
    for r in signer.results:
        _verify(key, r)
    assert "b" in {r["args"]["member"] for r in shim.calls("C_Sign")[mark:]}  # round robin: b signs again


def test_a_member_hung_with_sigstop_is_set_aside_and_rejoins_when_it_answers(pool_cards: PoolCards,
                                                                           tmp_path: Path) -> None:
    shim = pool_shim(tmp_path, pool_cards, ["a", "b", "c"], timeout_ms=1500)
    key = _ec_key(pool_cards, "a")
    signer = Signer(shim, threads=3)
    signer.batch(6)
    pid = pool_cards.pid("c")
    os.kill(pid, signal.SIGSTOP)
    try:
        signer.batch(24)
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait_for(shim, "answered", "c")
    signer.batch(1)  # a routing decision: the member that answered is asked to rejoin
    _wait_for(shim, "join", "c", count=2)
    mark = len(shim.calls("C_Sign"))
    signer.batch(9)
    signer.close()
    results = signer.results
    assert sorted(r["n"] for r in results) == list(range(40))
    assert [r for r in results if "error" in r] == []
    for r in results:
        _verify(key, r)
    assert [t["member"] for t in _pool_events(shim, "timeout")] == ["c"], _pool_events(shim)
    failed_over = [r for r in shim.calls() if any(f["member"] == "c" for f in r["args"].get("failover", []))]
    assert failed_over and all(r["rv"] == "CKR_OK" for r in failed_over)
    rejoined = [e for e in _pool_events(shim, "join") if e["member"] == "c"]
    assert len(rejoined) == 2  # at start, and after it answered (logged in again, keys matched again)
    assert "c" in {r["args"]["member"] for r in shim.calls("C_Sign")[mark:]}


def test_members_with_different_keys_under_one_cka_id_are_refused(pool_cards: PoolCards, tmp_path: Path) -> None:
    shim = pool_shim(tmp_path, pool_cards, ["a", "d"])
    proc = shim.run(["pkcs11-tool", "--module", shim.module, "-L"], check=False)
    assert proc.returncode != 0
    init = shim.calls("C_Initialize")
    assert init and init[0]["rv"] == "CKR_GENERAL_ERROR"
    assert "pool refused to start" in init[0]["error"] and "differs" in init[0]["error"], init[0]


def test_all_members_pulled_is_a_clean_error_without_a_hang(pool_cards: PoolCards, tmp_path: Path) -> None:
    shim = pool_shim(tmp_path, pool_cards, ["a", "c"], timeout_ms=1500)
    signer = Signer(shim)
    assert all("sig" in r for r in signer.batch(3))
    for name in ("a", "c"):
        pool_cards.harness.remove(pool_cards.readers[name])
    try:
        after = signer.batch(3)
    finally:
        for name in ("a", "c"):
            pool_cards.harness.insert(pool_cards.readers[name])
    signer.close()
    assert [r.get("error") for r in after] == ["CKR_DEVICE_REMOVED"] * 3, after


def test_a_key_on_some_members_only_is_reported_at_start_and_by_probe(pool_cards: PoolCards,
                                                                      tmp_path: Path) -> None:
    shim = pool_shim(tmp_path, pool_cards, ["a", "b", "c"])
    pin = tmp_path / "pin"
    pin.write_text(PIN)
    out = shim.run(["sc4dnssec", "probe", "--pin-source", str(pin), "--json"], check=False,
                   extra_env={"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"})
    report = json.loads(out.stdout)
    assert report["pool"]["members"] == {"a": "up", "b": "up", "c": "up"}, report.get("pool")
    rsa_id = next(k["id"] for k in report["keys"] if k["class"] == "private key" and k["type"] == "RSA")
    assert {k["id"]: k["on"] for k in report["pool"]["partial_keys"]} == {rsa_id: ["a", "b"]}
    assert any(w["code"] == "pool" and rsa_id in w["message"] for w in report["warnings"]), report["warnings"]


def _pool_events(shim: ShimProcesses, event: str | None = None) -> list[dict[str, Any]]:
    return _events(shim.records(), event)
