"""(4) start-up: load the module, C_Initialize, C_GetSlotList, in a fresh C process."""

from __future__ import annotations

import time
from pathlib import Path

from bench import driver
from bench.modules import Way
from bench.stats import interleaved, median


def startup(exe: Path, ways: dict[str, Way], reps: int) -> dict[str, dict[str, float]]:
    """Median in-process time (dlopen .. second C_GetSlotList) and whole-process wall time, in ms."""
    def sample(w: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        r = driver.run(exe, ["startup", ways[w].module], ways[w].env)
        return float(r["startup_us"]) / 1000, (time.perf_counter() - t0) * 1000

    raw = interleaved(reps, ("direct", "shim"), sample)
    return {w: {"in_process_ms": median([s[0] for s in v]), "process_ms": median([s[1] for s in v])}
            for w, v in raw.items()}


def import_profile(exe: Path, way: Way, top: int = 10) -> list[tuple[str, float]]:
    """What the embedded interpreter imports at start-up (PYTHONPROFILEIMPORTTIME), top-level
    imports by cumulative ms: the profile of the start-up figure."""
    import subprocess

    env = {**way.env, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([str(exe), "startup", way.module], env=env, capture_output=True, text=True, timeout=120)
    rows: list[tuple[str, float]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line.split("|")
        name = parts[2][1:]  # "import time: self | cumulative | <two spaces per level>name"
        if name.startswith(" "):  # nested import: counted in its parent's cumulative time
            continue
        rows.append((name.strip(), int(parts[1]) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:top]
