"""Every consumer sequence replayed through the shim over the card under test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance import sequence as seqmod
from conformance.client import Worker
from conformance.leaks import leak_report
from conformance.replay import instantiate, judge
from conformance.sequence import Sequence

SEQUENCES = seqmod.all_sequences()


def unsupported(seq: Sequence, card: Any, request: pytest.FixtureRequest) -> str | None:
    """Why the card cannot run ``seq`` (missing key kind, no key generation), or None."""
    for kind in ("ec", "rsa"):
        if kind in seq.needs and kind not in card.keys:
            return f"no {kind} key"
    if "generate" in seq.needs:
        if not card.can_generate:
            return "card cannot generate"
        if card.kind == "opensc" and not request.config.getoption("--card-destructive"):
            return "needs --card-destructive"
    return None


@pytest.mark.parametrize("path", SEQUENCES, ids=[p.stem for p in SEQUENCES])
def test_consumer_sequence_passes_through_the_shim(path: Path, card: Any, shim: Worker,
                                                   bindings: dict[str, Any],
                                                   matrix_results: dict[str, dict[str, Any]],
                                                   request: pytest.FixtureRequest) -> None:
    seq = seqmod.load(path)
    why = unsupported(seq, card, request)
    if why:
        matrix_results[seq.name] = {"status": "skip", "why": why}
        pytest.skip(why)
    steps = instantiate(seq)
    results = shim.run(steps)
    outcome = judge(seq, steps, results, bindings)
    leaks = leak_report(shim, steps, results)
    first = outcome.first_failure
    matrix_results[seq.name] = {
        "status": "fail" if first or leaks else "pass",
        "first_failure": first.describe() if first else ("; ".join(leaks) if leaks else ""),
        "signatures": len(outcome.signatures),
    }
    assert not first, f"{seq.name} on {card.kind}:\n{outcome.summary()}"
    assert not leaks, leaks
