"""Virtual PIV cards holding the same keys, and the shim configured as a card pool over them
(tests/pool, and the BIND suite's pool flow).

The clones are made at personalisation, as an import would (``virtualcard.provision.clone_piv``):
each has its own serial, CHUID and certificate CN, so each is its own token to OpenSC.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sc4testkit.shimenv import ShimProcesses, shim_environment
from shim.locate import module_path
from virtualcard.harness import Harness, opensc_module
from virtualcard.provision import clone_piv, provision_defaults
from virtualcard.state import CardState

PIN = "123456"


@dataclass
class PoolCards:
    harness: Harness
    labels: dict[str, str]  # "a".."d" -> token label
    readers: dict[str, int]
    states: dict[str, Path]

    def pid(self, name: str) -> int:
        """The card process (SIGSTOP hangs that card)."""
        return self.harness.cards[self.readers[name]].pid


@contextmanager
def started_cards(run: Path, latency_ms: float | None = None) -> Iterator[PoolCards]:
    """Cards a and b (the same keys), c (a's EC key only) and d (keys of its own under the same
    CKA_IDs: PIV ids are fixed by slot) in a private pcscd under ``run``.  HarnessError when the
    virtual card stack is missing."""
    h = Harness(run / "run", readers=4)
    h.start()
    try:
        a = CardState(run / "a")
        provision_defaults(a)
        states = {"a": a, "b": clone_piv(a, run / "b"), "c": clone_piv(a, run / "c", slots=[0x9A])}
        d = CardState(run / "d")
        provision_defaults(d)
        states["d"] = d
        readers = {name: h.add_card(st.dir, latency_ms=latency_ms).reader for name, st in states.items()}
        labels = {name: f"virtualcard-{st.counters.serial}" for name, st in states.items()}
        yield PoolCards(h, labels, readers, {n: st.dir for n, st in states.items()})
    finally:
        h.stop()


def pool_shim(workdir: Path, cards: PoolCards, names: list[str], **pool: Any) -> ShimProcesses:
    """The shim in a child's environment, pooling the cards ``names`` (by token label)."""
    conf = {"pool": {"label": "dnssec pool", "serial": "pool0001",
                     "members": [{"name": n, "label": cards.labels[n]} for n in names], **pool}}
    env, audit = shim_environment(workdir, opensc_module(), cards.harness.env, conf)
    return ShimProcesses(module_path(), env, audit)


def pool_events(records: list[dict[str, Any]], event: str | None = None) -> list[dict[str, Any]]:
    """The pool's events among audit records (``backend`` records with a ``pool`` member)."""
    return [r["args"] for r in records
            if r["kind"] == "backend" and "pool" in (r["args"] or {}) and (event is None or r["args"]["pool"] == event)]
