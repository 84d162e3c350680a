"""What the write-ahead ``intent`` records cost (issue 12 item 2).

Before a call in ``shim.spec.STATE_CHANGING`` reaches the card, the audit layer writes an
``intent`` record; every other call, C_Sign included, pays one boolean test.  Two measurements:

- in-process, on the real audit layer and the real AuditWriter with the core's C append (a file
  in a temporary directory), over a layer below that answers CKR_OK at once, so only the shim's
  own work is timed: C_Sign
  as the shim runs it, and C_Sign compiled as if it were state-changing (the difference is the
  price of one write-ahead record on the hot path, were C_Sign ever to need one); C_Login with
  its intent and compiled without one; each with fsync none and always;
- in real logs (the per-call section's, the BIND section's): how many ``intent`` records a run
  wrote beside its ``call`` records (shim.audit.schema kinds), which is what a signer pays.

Run as ``python -m bench.writeahead N REPS`` in a fresh process: it binds ``shim.cabi`` to an
ABI-mode ffi of its own.  Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import median

FSYNCS = ("none", "always")


@dataclass
class WriteAhead:
    n: int
    reps: int
    #: (function, "intent" | "no intent", fsync) -> median µs per call over the layer stand-in
    us: dict[str, float]
    samples: dict[str, list[float]]

    @staticmethod
    def key(fn: str, intent: bool, fsync: str) -> str:
        return f"{fn} {'intent' if intent else 'no intent'} fsync={fsync}"

    def cost(self, fn: str, fsync: str) -> float:
        """µs one intent record adds to ``fn``."""
        return self.us[self.key(fn, True, fsync)] - self.us[self.key(fn, False, fsync)]


def _entries(intent_for: set[str], fsync: str, log: Path, lib: Any, core: str) -> tuple[Any, dict[str, Any]]:
    from shim import cabi
    from shim.audit.writer import AuditWriter
    from shim.call import Call
    from shim.functions import BY_NAME
    from shim.layers import audit as audit_layer
    from shim.runtime import locked_append_of
    from shim.spec import STATE_CHANGING

    def ok(call: Call, *args: Any) -> int:
        return 0

    below = {name: ok for name in ("C_Sign", "C_Login")}
    assert set(below) <= set(BY_NAME)
    saved = audit_layer.STATE_CHANGING
    audit_layer.STATE_CHANGING = frozenset((STATE_CHANGING - set(below)) | intent_for)
    try:
        writer = AuditWriter(str(log), fsync=fsync, locked_append=locked_append_of(lib, cabi.ffi, core))
        layer = audit_layer.Audit(below, writer, fail_closed=True)
        return writer, layer.entries()
    finally:
        audit_layer.STATE_CHANGING = saved


def measure(n: int, reps: int) -> WriteAhead:
    from cffi import FFI

    import shim
    from shim import cabi
    from shim._build import C_DIR, CORE_MODULE, function_list_struct

    ffi = FFI()
    ffi.cdef((C_DIR / "cryptoki.h").read_text() + function_list_struct()
             + "long long sc4_audit_append(int fd, long long expected_size, const char *data, size_t len, int flags);")
    # The built core, for its C append (plain C: opening it starts no interpreter).
    (core,) = Path(shim.__file__).resolve().parent.glob(f"{CORE_MODULE}.*.so")
    lib = ffi.dlopen(str(core))
    cabi.bind(ffi, lib)
    data, sig = ffi.new("CK_BYTE[]", bytes(range(32))), ffi.new("CK_BYTE[]", 64)
    sig_len = ffi.new("CK_ULONG *", 64)
    pin = ffi.new("CK_UTF8CHAR[]", b"1234")
    args = {"C_Sign": (1, data, 32, sig, sig_len), "C_Login": (1, 1, pin, 4)}
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="sc4bench-wa-") as d:
        for rep in range(reps):
            for fsync in FSYNCS:
                calls = n if fsync == "none" else max(50, n // 10)  # fsync-bound: fewer calls
                cases = [(fn, intent) for fn in args for intent in (False, True)]
                k = rep % len(cases)
                for fn, intent in [*cases[k:], *cases[:k]]:
                    log = Path(d) / f"{fn}-{intent}-{fsync}-{rep}.jsonl"
                    writer, entries = _entries({fn} if intent else set(), fsync, log, lib, str(core))
                    entry, a = entries[fn], args[fn]
                    for _ in range(min(200, calls)):  # warm-up: first records, caches
                        entry(*a)
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        entry(*a)
                    us = (time.perf_counter() - t0) / calls * 1e6
                    writer.close()
                    kinds = Counter(json.loads(line)["kind"] for line in log.open())
                    made = min(200, calls) + calls
                    if kinds["call"] != made or kinds["intent"] != (made if intent else 0):
                        raise RuntimeError(f"{fn} intent={intent}: {dict(kinds)} for {made} calls")
                    samples.setdefault(WriteAhead.key(fn, intent, fsync), []).append(us)
    return WriteAhead(n, reps, {k: median(v) for k, v in samples.items()}, samples)


def log_counts(path: Path) -> dict[str, Any]:
    """``call`` and ``intent`` records of a real log, and which functions the intents announce."""
    kinds: Counter[str] = Counter()
    intents: Counter[str] = Counter()
    if path.exists():
        for line in path.open():
            rec = json.loads(line)
            kinds[rec["kind"]] += 1
            if rec["kind"] == "intent":
                intents[rec["fn"]] += 1
    return {"calls": kinds["call"], "intents": kinds["intent"], "intent_fns": dict(intents)}


def describe_counts(c: dict[str, Any]) -> str:
    fns = ", ".join(f"{fn} {k}" for fn, k in sorted(c["intent_fns"].items()))
    share = c["intents"] / c["calls"] * 100 if c["calls"] else 0.0
    return (f"{c['intents']} write-ahead intent records beside {c['calls']} call records "
            f"({share:.2f} %{': ' + fns if fns else ''})")


def run(n: int, reps: int) -> WriteAhead:
    """In a fresh interpreter: ``shim.cabi`` is bound to this module's own ffi there."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "bench.writeahead", str(n), str(reps)], capture_output=True,
                          text=True, timeout=1800, cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0:
        raise RuntimeError(f"bench.writeahead failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return WriteAhead(out["n"], out["reps"], out["us"], out["samples"])


if __name__ == "__main__":
    w = measure(int(sys.argv[1]), int(sys.argv[2]))
    json.dump({"n": w.n, "reps": w.reps, "us": w.us, "samples": w.samples}, sys.stdout)
    sys.stdout.write("\n")
