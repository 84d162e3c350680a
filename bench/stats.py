"""Medians and interleaved repetitions."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

K = TypeVar("K")


def interleaved(reps: int, cases: Sequence[K], sample: Callable[[K], float]) -> dict[K, list[float]]:
    """``reps`` rounds; each round samples every case once, the order rotating per round."""
    out: dict[K, list[float]] = {c: [] for c in cases}
    for r in range(reps):
        k = r % len(cases)
        for case in [*cases[k:], *cases[:k]]:
            out[case].append(sample(case))
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))

