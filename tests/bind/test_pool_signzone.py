"""BIND 9.20 dnssec-signzone (pkcs11-provider, in the Debian 13 root) through a pool of three
cloned virtual PIV cards, with one card pulled in the middle of the run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sc4testkit.pool import PIN, PoolCards, pool_events, started_cards
from sc4testkit.trixie import Shim, Trixie
from sc4testkit.zones import write_zone
from shim.config import dumps

pytestmark = pytest.mark.bind

ORIGIN = "example.test"
LABEL = "dnssec-pool"


@pytest.fixture(scope="module")
def bind_cards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolCards]:
    """Under pytest's base temp dir, which the root shares; 20 ms per signature, so the run lasts."""
    with started_cards(tmp_path_factory.mktemp("pc"), latency_ms=20) as cards:
        yield cards


def _card_signatures(audit: Path) -> int:
    if not audit.exists():
        return 0
    return sum(1 for line in audit.read_text().splitlines()
               if '"src":"card"' in line and '"rv":"CKR_OK"' in line)


def test_signzone_through_the_pool_survives_a_pulled_member(bind_cards: PoolCards, trixie: Trixie, shim: Shim,
                                                            tmp_path: Path) -> None:
    work = tmp_path.resolve()
    (work / "pin").write_text(PIN)
    conf = work / "sc4dnssec.toml"
    conf.write_text(dumps({"backend": trixie.find_lib("opensc-pkcs11.so"),
                           "pool": {"label": LABEL, "serial": "pool0001", "timeout_ms": 3000,
                                    "members": [{"name": n, "label": bind_cards.labels[n]} for n in "abc"]}}))
    audit = work / "audit.jsonl"
    cnf = work / "openssl.cnf"
    cnf.write_text(trixie.openssl_cnf(shim.module))
    env = {**bind_cards.harness.env, "OPENSSL_CONF": str(cnf), "SC4DNSSEC_CONF": str(conf),
           "SC4DNSSEC_AUDIT_LOG": str(audit)}
    uri = f"pkcs11:token={LABEL};object=PIV%20AUTH%20key;pin-source={work / 'pin'}"
    res = trixie.run(["dnssec-keyfromlabel", "-l", uri, "-a", "ECDSAP256SHA256", "-f", "KSK", ORIGIN],
                     env=env, cwd=work)
    ksk = res.stdout.strip().splitlines()[-1]
    zone = work / "zone.db"
    write_zone(zone, ORIGIN, 400)
    with zone.open("a") as f:
        f.write((work / f"{ksk}.key").read_text())
    log = work / "signzone.log"
    proc = trixie.popen(["dnssec-signzone", "-n", "4", "-x", "-z", "-o", ORIGIN, "-k", ksk, "zone.db"],
                        env=env, cwd=work, log=log)
    b = bind_cards.readers["b"]
    try:
        while _card_signatures(audit) < 100 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"dnssec-signzone ended before the pull:\n{log.read_text()[-3000:]}"
        bind_cards.harness.remove(b)
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        bind_cards.harness.insert(b)
    assert rc == 0, log.read_text()[-3000:]
    verdict = trixie.run(["dnssec-verify", "-z", "-o", ORIGIN, "zone.db.signed"], cwd=work, check=False)
    assert verdict.returncode == 0 and "Zone fully signed" in verdict.stdout + verdict.stderr, verdict.explain()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    events = pool_events(records)
    assert any(e["pool"] in ("leave", "timeout") and e["member"] == "b" for e in events), events
    failed_over = [r for r in records if r["kind"] == "call" and r["args"].get("failover")]
    assert failed_over and all(r["rv"] == "CKR_OK" for r in failed_over), failed_over[:3]
    signed = [r for r in records if r["kind"] == "call" and r.get("src") == "card" and r["rv"] == "CKR_OK"]
    assert {r["args"]["member"] for r in signed} <= {"a", "b", "c"}
    chain = trixie.run([shim.cli, "audit", "verify", audit], check=False)
    assert chain.returncode == 0, chain.explain()
