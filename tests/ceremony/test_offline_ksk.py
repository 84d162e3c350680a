"""The BIND side of the offline-KSK ceremony (issue 17), end to end on real parts.

Offline: the KSK on a virtual SmartCard-HSM (pcscd + vpcd + OpenSC's sc-hsm driver) through the
shim and pkcs11-provider; the card's RNG is mixed into the kernel's pool, dnssec-ksr pre-generates
30 days of ZSKs, the card signs the KSR into an SKR, dnssec-dsfromkey exports the DS. Online: a
named 9.20 that has never seen the provider, the shim or the card imports the SKR and serves the
zone; dig, dnssec-verify and the DS check what it serves. The card side's audit log verifies and
holds the calls.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sc4testkit.tokens import VIRTUAL_SCHSM
from sc4testkit.trixie import Shim, Trixie
from shim.ceremony import bind
from tests.bind import conftest as bind_fixtures
from tests.bind.conftest import Signer, VirtualCard, _make_piv, record_time
from tests.ceremony import online

pytestmark = pytest.mark.bind

# tests/bind's session fixtures (the Debian 13 root, the shim built in it, the virtual SmartCard-HSM),
# here without a conftest so that the ceremony's own tests can add theirs beside this file.
trixie = bind_fixtures.trixie
shim = bind_fixtures.shim
schsm_card = bind_fixtures.schsm_card

ZONE = "example.test"
PERIOD_DAYS = 30


def _card_records(signer: Signer) -> list[dict[str, object]]:
    return [r for r in signer.audit() if r.get("kind", "call") == "call"]


def _rrsigs_by_tag(text: str, covered: str) -> Counter[int]:
    tags: Counter[int] = Counter()
    for line in text.splitlines():
        f = line.split()
        if len(f) > 10 and f[3] == "RRSIG" and f[4] == covered:
            tags[int(f[10])] += 1
    return tags


@pytest.fixture
def card_signer(trixie: Trixie, shim: Shim, schsm_card: VirtualCard, tmp_path: Path) -> Signer:
    return _make_piv("schsm", trixie, tmp_path.resolve(), shim, schsm_card, VIRTUAL_SCHSM)


def test_offline_ksk_ceremony_then_online_named_serves_the_skr(card_signer: Signer, trixie: Trixie, shim: Shim) -> None:
    start = time.monotonic()
    signer = card_signer
    work = signer.work / "ceremony"
    work.mkdir()
    env = bind.ToolEnv(signing=signer.sign_env, runner=online.runner(trixie), module=shim.module)
    schedule = bind.Schedule.days(PERIOD_DAYS)
    resign = schedule.resign.total_seconds()

    # -- offline: the ceremony's BIND steps, the card in the reader -----------------------
    ksk = bind.ksk_from_card(ZONE, work, signer.uri("ec"), env, since=schedule.start)
    assert "Label:" in ksk.private_file.read_text() and "PIN" not in ksk.private_file.read_text().upper()
    before_rng = len(_card_records(signer))
    seed = bind.seed_kernel_from_card(work, ksk, env)
    assert seed.reseeded, seed.reason  # the tests run as root: RNDRESEEDCRNG is allowed
    drawn = [
        r
        for r in _card_records(signer)[before_rng:]
        if r.get("fn") == "C_GenerateRandom" and r.get("rv") == "CKR_OK" and isinstance(r.get("args"), dict)
    ]
    assert [(r["args"]["randomLen"], r["args"]["card_rng"]) for r in drawn if r["args"]["randomLen"] != 8] == [  # type: ignore[index]
        (bind.CARD_RNG_BYTES, True)
    ], drawn
    before_keygen = len(_card_records(signer))
    files = bind.pregenerate_zsks(ZONE, work, ksk, schedule, env)
    ksr = files[-1]
    zsk_private = [p for p in files if p.suffix == ".private"]
    assert zsk_private and all("PrivateKey:" in p.read_text() for p in zsk_private)
    zsk_tags = {bind.KskRef("", p.with_suffix("")).tag for p in zsk_private}
    # keygen and request need no card: they never load the provider
    assert len(_card_records(signer)) == before_keygen

    before_sign = len(_card_records(signer))
    skr = bind.sign_ksr(ZONE, work, ksk, ksr, schedule, env)
    bundles = [datetime.strptime(b, "%Y%m%d%H%M%S").replace(tzinfo=UTC) for b in bind.skr_bundles(skr)]
    # a bundle at the start, then one per re-sign interval (DPS 6.6: every 10 days)
    assert bundles[0] == schedule.start, (bundles, schedule)
    gaps = [(b - a).total_seconds() for a, b in zip(bundles, bundles[1:], strict=False)]
    assert gaps and all(0 < g <= resign for g in gaps) and gaps.count(resign) >= PERIOD_DAYS // 10 - 1, bundles
    ksk_sigs = sum(_rrsigs_by_tag(skr.read_text(), rtype)[ksk.tag] for rtype in ("DNSKEY", "CDNSKEY", "CDS"))
    assert ksk_sigs >= len(bundles), skr.read_text()[:3000]
    sign_calls = _card_records(signer)[before_sign:]
    card_signs = [r for r in sign_calls if r.get("src") == "card" and r.get("fn") in ("C_Sign", "C_SignFinal")]
    assert len(card_signs) >= ksk_sigs, Counter(str(r.get("fn")) for r in sign_calls)

    ds = bind.export_ds(ZONE, work, ksk, env)
    verdict = signer.audit_verify()
    assert verdict.returncode == 0, verdict.explain()
    record_time("offline_ksk[schsm]", "ceremony BIND steps (keyfromlabel..DS)", time.monotonic() - start)

    # -- online: named with the ZSKs, the KSK's public key and the SKR; no card --------------
    assert signer.audit_log is not None
    audit_size = signer.audit_log.stat().st_size
    served = online.serve_and_check(trixie, ZONE, schedule, ksk, work, skr, ds, signer.work / "online",
                                    [shim.module, Path(shim.module).name])
    record_time("offline_ksk[schsm]", "online named: SKR import to signed DNSKEY", served.waited)
    assert served.zsk_tags <= zsk_tags, (served.zsk_tags, zsk_tags)
    assert signer.audit_log.stat().st_size == audit_size, "the online side wrote to the card's audit log"
    record_time("offline_ksk[schsm]", "whole test", time.monotonic() - start)
