"""(3) card-bound rate: the virtual PIV card (fixed latency per signature) behind pcscd + OpenSC."""

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
from shim.locate import module_path
from virtualcard.harness import Harness
from virtualcard.pytest_plugin import start_virtual_card


@dataclass
class Card:
    module: str  # opensc-pkcs11.so
    pin: str
    env: dict[str, str]


@contextmanager
def virtual_card(latency_ms: float) -> Iterator[Card]:
    run = Path(tempfile.mkdtemp(prefix="vcard-b"))  # short: AF_UNIX paths are limited
    h = Harness(run / "run", readers=2)
    h.start()
    try:
        vc = start_virtual_card(h, run / "state", latency_ms=latency_ms)
        yield Card(vc.info.module, vc.info.pin, dict(h.env))
    finally:
        h.stop()
        shutil.rmtree(run, ignore_errors=True)


@dataclass
class CardResult:
    threads: int
    sigs: int
    sig_per_s: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.sig_per_s["shim"] / self.sig_per_s["direct"]


def card_rate(exe: Path, card: Card, audit: Path, reps: int, sigs: int,
              threads: tuple[int, ...] = (1, 4)) -> list[CardResult]:
    ways = {
        "direct": (card.module, clean_env(card.env)),
        "shim": (module_path(), clean_env({**card.env, "SC4DNSSEC_BACKEND": card.module,
                                           "SC4DNSSEC_AUDIT_LOG": str(audit)})),
    }
    out = []
    for t in threads:
        def sample(w: str, t: int = t) -> float:
            module, env = ways[w]
            return float(driver.run(exe, ["loop", module, card.pin, "sign", str(t), str(max(1, sigs // t))],
                                    env)["ops_per_s"])
        raw = interleaved(reps, ("direct", "shim"), sample)
        out.append(CardResult(t, sigs, {w: median(v) for w, v in raw.items()}))
    return out
