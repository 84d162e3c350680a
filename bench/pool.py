"""(7) card pool: signatures/s through the pool of N virtual cards against one card directly, and
BIND 9.20 ``dnssec-signzone`` with its KSK and ZSK on a pool of 4 cards against one card.

Each card is a virtual PIV card with the same keys (``clone_piv``) and a fixed latency per
signature, in a vpcd instance of its own (pcscd serialises the two readers of one instance); the
C consumer signs from 4 threads.  OpenSC is told to ignore the empty readers, so it sees the
cards, at most 4 (its slot limit).

The BIND run is driven like bench/bind.py (the Debian 13 root through sc4testkit.trixie, the shim
installed in it): the cards' pcscd runs on the host and the root's OpenSC talks to it through the
bind-mounted socket.  One card is OpenSC preloaded into BIND (LD_PRELOAD, as tests/bind's
``piv-direct``); the pool is the shim in the root over the root's OpenSC.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench import driver
from bench.modules import clean_env
from bench.stats import interleaved, median
from shim.config import dumps
from shim.locate import module_path
from virtualcard.harness import Harness, opensc_module
from virtualcard.provision import clone_piv, provision_defaults, provision_slot
from virtualcard.state import CardState

PIN = "123456"


@dataclass
class Cards:
    harness: Harness
    labels: list[str]
    readers: list[int]
    work: Path


# The ZSK's slot: 9E (CARD AUTH key, OpenSC id 04) needs no context-specific login per signature,
# which 9C does (CKA_ALWAYS_AUTHENTICATE), and 9D holds the default RSA key.
ZSK_SLOT, ZSK_ID, ZSK_LABEL = 0x9E, "04", "CARD AUTH key"
KSK_ID, KSK_LABEL = "01", "PIV AUTH key"


@contextmanager
def cloned_cards(n: int, latency_ms: float, zsk: bool = False) -> Iterator[Cards]:
    """``n`` cards with the same keys; with ``zsk`` also an EC P-256 key in ``ZSK_SLOT``."""
    run = Path(tempfile.mkdtemp(prefix="vcard-bp"))
    h = Harness(run / "run", readers=2 * n)
    h.start()
    try:
        first = CardState(run / "card0")
        provision_defaults(first)
        if zsk:
            provision_slot(first, ZSK_SLOT, "EC:secp256r1", "virtualcard zsk")
        states = [first] + [clone_piv(first, run / f"card{i}") for i in range(1, n)]
        readers = [h.add_card(st.dir, reader=2 * i, latency_ms=latency_ms).reader for i, st in enumerate(states)]
        yield Cards(h, [f"virtualcard-{st.counters.serial}" for st in states], readers, run)
    finally:
        h.stop()
        shutil.rmtree(run, ignore_errors=True)


def _opensc_conf(cards: Cards, visible: list[int]) -> Path:
    hidden = [cards.harness.reader_name(r) for r in range(cards.harness.readers) if r not in visible]
    path = cards.work / f"opensc-{'-'.join(map(str, visible))}.conf"
    path.write_text("app default {\n  ignored_readers = " + ", ".join(f'"{x}"' for x in hidden) + ";\n}\n")
    return path


@dataclass
class PoolResult:
    members: int
    threads: int
    sigs: int
    sig_per_s: dict[str, float]  # "direct" (one card, no shim), "pool"

    @property
    def ratio(self) -> float:
        return self.sig_per_s["pool"] / self.sig_per_s["direct"]


def pool_rate(exe: Path, latency_ms: float, reps: int, sigs: int, sizes: tuple[int, ...] = (1, 2, 4),
              threads: int = 4) -> list[PoolResult]:
    """One card directly and each pool size, interleaved in every round; the one-card runs are
    shared by the sizes (the same measurement each time), which keeps the section short."""
    with cloned_cards(max(sizes), latency_ms) as cards:
        env = {**cards.harness.env}
        one = clean_env({**env, "OPENSC_CONF": str(_opensc_conf(cards, cards.readers[:1]))})
        ways = {"direct": (opensc_module(), one)}
        pool_env = {**env, "OPENSC_CONF": str(_opensc_conf(cards, cards.readers))}
        for n in sizes:
            work = cards.work / f"pool{n}"
            work.mkdir()
            conf = work / "sc4dnssec.toml"
            conf.write_text(dumps({"backend": opensc_module(),
                                   "pool": {"label": "bench pool", "serial": f"pool{n}",
                                            "members": [{"name": f"m{i}", "label": lab}
                                                        for i, lab in enumerate(cards.labels[:n])]}}))
            ways[f"pool{n}"] = (module_path(), clean_env({**pool_env, "SC4DNSSEC_CONF": str(conf),
                                                           "SC4DNSSEC_AUDIT_LOG": str(work / "audit.jsonl")}))

        def sample(w: str) -> float:
            module, e = ways[w]
            return float(driver.run(exe, ["loop", module, PIN, "sign", str(threads), str(max(1, sigs // threads))],
                                    e)["ops_per_s"])

        raw = interleaved(reps, tuple(ways), sample)
    direct = median(raw["direct"])
    return [PoolResult(n, threads, sigs, {"direct": direct, "pool": median(raw[f"pool{n}"])}) for n in sizes]


@dataclass
class BindPoolResult:
    members: int
    names: int
    threads: int
    latency_ms: float
    signatures: int
    seconds: dict[str, float]  # "one" (one card, OpenSC preloaded), "pool" (the shim's pool of ``members``)
    samples: dict[str, list[float]]
    verify: dict[str, str]  # way -> what dnssec-verify said of its last signed zone
    per_member: dict[str, int]  # member -> card signatures in the last pool run (audit records)

    @property
    def speedup(self) -> float:
        """How many times faster the pool signed the zone than one card."""
        return self.seconds["one"] / self.seconds["pool"]


def _verdict(res: Any) -> str:
    text = res.stdout + res.stderr
    return "fully signed" if res.returncode == 0 and "Zone fully signed" in text else f"FAILS: {text.strip()[-300:]}"


def _member_signatures(audit: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in audit.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "call" and rec.get("src") == "card" and rec.get("rv") == "CKR_OK":
            member = (rec.get("args") or {}).get("member")
            if member is not None:
                counts[member] = counts.get(member, 0) + 1
    return dict(sorted(counts.items()))


def bind_pool(latency_ms: float, reps: int, members: int = 4, names: int = 1000, threads: int = 4) -> BindPoolResult:
    """``dnssec-signzone -n threads`` over a ``names``-name zone (bench/bind.py's, 4 RRSIGs a name)
    with a P-256 KSK (9A) and ZSK (``ZSK_SLOT``): on one card, and on a pool of ``members`` cards."""
    from bench.bind import ORIGIN, count_rrsigs, write_zone
    from sc4testkit.trixie import Trixie, install_shim

    with cloned_cards(members, latency_ms, zsk=True) as cards:
        work = cards.work.resolve()
        t = Trixie.ensure(binds=[str(work)])
        shim = install_shim(t, work / "shim")
        opensc = t.find_lib("opensc-pkcs11.so")
        pin = work / "pin"
        pin.write_text(PIN)
        conf = work / "sc4dnssec.toml"
        conf.write_text(dumps({"backend": opensc,
                               "pool": {"label": "bench pool", "serial": "poolbind",
                                        "members": [{"name": f"m{i}", "label": lab}
                                                    for i, lab in enumerate(cards.labels[:members])]}}))
        audit = work / "audit-pool.jsonl"
        # The token's URI selection: by id on one card; through the shim by label, because the shim
        # adds a public key object under the key's label (tests/bind/conftest.py says why).
        ways: dict[str, tuple[str, dict[str, str], tuple[str, str]]] = {
            "one": (cards.labels[0], {"OPENSC_CONF": str(_opensc_conf(cards, cards.readers[:1])), "LD_PRELOAD": opensc},
                    (f"id=%{KSK_ID}", f"id=%{ZSK_ID}")),
            "pool": ("bench pool", {"OPENSC_CONF": str(_opensc_conf(cards, cards.readers[:members])),
                                    "SC4DNSSEC_CONF": str(conf), "SC4DNSSEC_AUDIT_LOG": str(audit)},
                     (f"object={quote(KSK_LABEL)}", f"object={quote(ZSK_LABEL)}")),
        }
        runs: dict[str, tuple[Path, dict[str, str], str, str]] = {}
        for way, (token, extra, (ksk_sel, zsk_sel)) in ways.items():
            d = work / way
            d.mkdir()
            cnf = d / "openssl.cnf"
            cnf.write_text(t.openssl_cnf(shim.module if way == "pool" else opensc))
            env = {**cards.harness.env, **extra, "OPENSSL_CONF": str(cnf)}
            tags = []
            for sel, flags in ((ksk_sel, ["-f", "KSK"]), (zsk_sel, [])):
                uri = f"pkcs11:token={quote(token)};{sel};pin-source={pin}"
                res = t.run(["dnssec-keyfromlabel", "-l", uri, "-a", "ECDSAP256SHA256", *flags, ORIGIN],
                            env=env, cwd=str(d))
                tags.append(res.stdout.strip().splitlines()[-1])
            zone = d / "zone.db"
            write_zone(zone, names)
            with zone.open("a") as f:
                for tag in tags:
                    f.write((d / f"{tag}.key").read_text())
            runs[way] = (d, env, tags[0], tags[1])

        def sample(way: str) -> float:
            d, env, ksk, zsk = runs[way]
            if way == "pool" and audit.exists():
                audit.unlink()
            t0 = time.monotonic()
            t.run(["dnssec-signzone", "-n", str(threads), "-x", "-o", ORIGIN, "-k", ksk, "-f", "zone.signed",
                   "zone.db", zsk], env=env, cwd=str(d), timeout=1800)
            return time.monotonic() - t0

        raw = interleaved(reps, ("one", "pool"), sample)
        verify = {way: _verdict(t.run(["dnssec-verify", "-o", ORIGIN, "zone.signed"], cwd=str(runs[way][0]),
                                      check=False)) for way in runs}
        return BindPoolResult(members, names, threads, latency_ms, count_rrsigs(work / "one" / "zone.signed"),
                              {w: median(v) for w, v in raw.items()}, raw, verify, _member_signatures(audit))
