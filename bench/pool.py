"""(7) card pool: signatures/s through the pool of N virtual cards against one card directly.

Each card is a virtual PIV card with the same keys (``clone_piv``) and a fixed latency per
signature, in a vpcd instance of its own (pcscd serialises the two readers of one instance); the
C consumer signs from 4 threads.  OpenSC is told to ignore the empty readers, so it sees the
cards, at most 4 (its slot limit).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import driver
from bench.modules import clean_env
from bench.stats import interleaved, median
from shim.config import dumps
from shim.locate import module_path
from virtualcard.harness import Harness, opensc_module
from virtualcard.provision import clone_piv, provision_defaults
from virtualcard.state import CardState

PIN = "123456"


@dataclass
class Cards:
    harness: Harness
    labels: list[str]
    readers: list[int]
    work: Path


@contextmanager
def cloned_cards(n: int, latency_ms: float) -> Iterator[Cards]:
    run = Path(tempfile.mkdtemp(prefix="vcard-bp"))
    h = Harness(run / "run", readers=2 * n)
    h.start()
    try:
        first = CardState(run / "card0")
        provision_defaults(first)
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
    out = []
    with cloned_cards(max(sizes), latency_ms) as cards:
        env = {**cards.harness.env}
        direct_env = clean_env({**env, "OPENSC_CONF": str(_opensc_conf(cards, cards.readers[:1]))})
        for n in sizes:
            work = cards.work / f"pool{n}"
            work.mkdir()
            conf = work / "sc4dnssec.toml"
            conf.write_text(dumps({"backend": opensc_module(),
                                   "pool": {"label": "bench pool", "serial": f"pool{n}",
                                            "members": [{"name": f"m{i}", "label": lab}
                                                        for i, lab in enumerate(cards.labels[:n])]}}))
            ways = {
                "direct": (opensc_module(), direct_env),
                "pool": (module_path(), clean_env({**env, "OPENSC_CONF": str(_opensc_conf(cards, cards.readers)),
                                                   "SC4DNSSEC_CONF": str(conf),
                                                   "SC4DNSSEC_AUDIT_LOG": str(work / "audit.jsonl")})),
            }

            def sample(w: str, ways: dict[str, tuple[str, dict[str, str]]] = ways) -> float:
                module, e = ways[w]
                return float(driver.run(exe, ["loop", module, PIN, "sign", str(threads), str(max(1, sigs // threads))],
                                        e)["ops_per_s"])

            raw = interleaved(reps, ("direct", "pool"), sample)
            out.append(PoolResult(n, threads, sigs, {w: median(v) for w, v in raw.items()}))
    return out
