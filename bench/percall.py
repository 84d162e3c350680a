"""(1) per-call overhead with PyKCS11 and (5) its scaling over threads with the C consumer."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import driver
from bench.modules import Way
from bench.stats import interleaved, median

WAYS = ("direct", "spy", "shim")


def pykcs11_sample(way: Way, pin: str, op: str, n: int, profile: Path | None = None) -> float:
    """µs per operation in a fresh PyKCS11 process."""
    argv = [sys.executable, "-m", "bench.pykcs11_loop", "--module", way.module, "--pin", pin,
            "--label", "-", "--op", op, "--n", str(n)]
    if profile is not None:
        argv += ["--profile", str(profile)]
    proc = subprocess.run(argv, env=way.env, capture_output=True, text=True, timeout=600,
                          cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0:
        raise RuntimeError(f"PyKCS11 loop over {way.name} failed:\n{proc.stderr[-3000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["us_per_op"])


@dataclass
class OpResult:
    op: str
    n: int
    samples: dict[str, list[float]]
    med: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.med = {w: median(v) for w, v in self.samples.items()}

    def overhead(self, way: str) -> float:
        return self.med[way] - self.med["direct"]

    @property
    def ratio(self) -> float:
        spy = self.overhead("spy")
        return self.overhead("shim") / spy if spy > 0 else float("inf")


def per_call(ways: dict[str, Way], pin: str, reps: int, n_sign: int, n_info: int) -> list[OpResult]:
    out = []
    for op, n in (("sign", n_sign), ("sessioninfo", n_info)):
        samples = interleaved(reps, WAYS, lambda w, op=op, n=n: pykcs11_sample(ways[w], pin, op, n))
        out.append(OpResult(op, n, samples))
    return out


@dataclass
class ThreadResult:
    op: str
    threads: int
    ops_per_s: dict[str, float]
    us_per_op: dict[str, float]  # per thread: wall time a thread spends per operation


def thread_scaling(exe: Path, ways: dict[str, Way], pin: str, reps: int, n_sign: int,
                   n_info: int, threads: tuple[int, ...] = (1, 4)) -> list[ThreadResult]:
    """The C consumer: T threads, one session each, N operations per thread."""
    out = []
    for op, n in (("sign", n_sign), ("sessioninfo", n_info)):
        for t in threads:
            per = max(1, n // t)
            raw = interleaved(reps, WAYS, lambda w, op=op, t=t, per=per: _drive(exe, ways[w], pin, op, t, per))
            out.append(ThreadResult(op, t, {w: median([r[0] for r in v]) for w, v in raw.items()},
                                    {w: median([r[1] for r in v]) for w, v in raw.items()}))
    return out


def _drive(exe: Path, way: Way, pin: str, op: str, threads: int, per: int) -> tuple[float, float]:
    r = driver.run(exe, ["loop", way.module, pin, op, str(threads), str(per)], way.env)
    return float(r["ops_per_s"]), float(r["us_per_op_thread"])


@dataclass
class PatternResult:
    """BIND 9.16's signature pattern (p11drive bind916: 20 calls per signature), one thread."""

    n: int
    samples: dict[str, list[float]]  # µs per signature
    med: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.med = {w: median(v) for w, v in self.samples.items()}

    @property
    def ratio(self) -> float:
        return self.med["shim"] / self.med["direct"]


def bind916_pattern(exe: Path, ways: dict[str, Way], pin: str, reps: int, n: int) -> PatternResult:
    """The conformance sequence bind916-signzone-ecdsa's per-signature calls, replayed N times
    by the C consumer, direct and through the shim."""
    samples = interleaved(reps, ("direct", "shim"),
                          lambda w: _drive(exe, ways[w], pin, "bind916", 1, n)[1])
    return PatternResult(n, samples)
