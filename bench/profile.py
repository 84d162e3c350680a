"""Where the shim's time goes: cProfile of the PyKCS11 loop through the shim.

The shim's Python runs inside the measuring interpreter (cffi embedding reuses an initialised
interpreter), so one cProfile run sees PyKCS11, the dispatch entry, the handler, the backend call
and the audit record.  Profiling inflates Python-heavy frames; read the shares, not the µs.
Set ``SC4_BENCH_PROFILE=DIR`` to keep the raw .prof files (snakeviz, pstats).
"""

from __future__ import annotations

import io
import json
import os
import pstats
import subprocess
import sys
from pathlib import Path

from bench.modules import Way
from bench.percall import pykcs11_sample


def profile(way: Way, pin: str, op: str, n: int, work: Path, top: int = 14) -> str:
    keep = os.environ.get("SC4_BENCH_PROFILE")
    out = Path(keep) if keep else work
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"shim-{op}.prof"
    pykcs11_sample(way, pin, op, n, profile=path)
    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.strip_dirs().sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    # Keep the table only (pstats prints a header with the file name and date).
    start = text.find("   ncalls")
    return text[start:].rstrip() if start >= 0 else text.rstrip()


def split(way: Way, pin: str, rounds: int) -> dict[str, dict[str, float]]:
    """µs/op with the audit record as is, built but not written, and absent (bench/split.py)."""
    proc = subprocess.run([sys.executable, "-m", "bench.split", way.module, pin, str(rounds)], env=way.env,
                          capture_output=True, text=True, timeout=600, cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0:
        raise RuntimeError(f"bench.split failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
