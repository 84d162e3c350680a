"""The card pool over virtual PIV cards with the same keys: presentation, signing, failover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives import hashes

from tests.pool.conftest import PIN, PoolCards, pool_events, pool_shim
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


def _signer(shim, count: int, threads: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.pool.signer", shim.module, "dnssec pool", PIN, str(count),
                             str(threads)], env={**shim.env, "PYTHONPATH": str(REPO)}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    joins = pool_events(shim, "join")
    assert {j["member"] for j in joins} >= {"a", "b"}
    signs = shim.calls("C_Sign")
    assert signs and all(r["args"]["member"] in ("a", "b") for r in signs), signs
