"""python -m bench [--quick] [--only SECTION,...] [--out BENCHMARKS.md]; SECTIONS below lists them"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import driver, machine, report
from bench.modules import ways
from bench.writeahead import log_counts

SECTIONS = ("percall", "threads", "bind916", "startup", "card", "bind", "writeahead", "profile", "remote",
            "pool")


@dataclass(frozen=True)
class Plan:
    reps: int
    n_sign: int
    n_info: int
    thread_reps: int
    startup_reps: int
    card_reps: int
    card_sigs: int
    pool_reps: int
    pool_sigs: int
    pool_bind_reps: int
    pool_bind_names: int
    bind_reps: int
    bind_big: bool  # also 10,000 names
    wa_calls: int  # in-process calls per write-ahead sample (fsync none; 1/10 of it with fsync always)
    n_bind916: int  # signatures of the BIND 9.16 pattern per run


FULL = Plan(reps=7, n_sign=2000, n_info=20000, thread_reps=3, startup_reps=15, card_reps=3, card_sigs=30,
            pool_reps=2, pool_sigs=80, pool_bind_reps=1, pool_bind_names=1000, bind_reps=5, bind_big=True,
            wa_calls=5000, n_bind916=2000)
QUICK = Plan(reps=3, n_sign=500, n_info=5000, thread_reps=1, startup_reps=5, card_reps=1, card_sigs=6,
             pool_reps=1, pool_sigs=40, pool_bind_reps=1, pool_bind_names=250, bind_reps=1, bind_big=False,
             wa_calls=2000, n_bind916=300)
CARD_LATENCY_MS = 100.0
# dnssec-signzone over the pool: one card signs the 1,000-name zone's ~4,000 RRSIGs in ~2 minutes at
# 20 ms per signature (~7 at 100 ms); 20 ms is still twice the virtual card stack's own cost per
# signature, so the cards, not the 2 cores, stay the bound.
POOL_BIND_LATENCY_MS = 20.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller counts, one BIND zone size (~2 min)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"))
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args(argv)
    only = set(a.only.split(","))
    plan = QUICK if a.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="sc4bench-"))
    r = report.Report(plan=plan, quick=a.quick, machine=machine.describe(), load_start=machine.load())
    t_start = time.monotonic()

    def section(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        if name not in only:
            return
        t0 = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc()
            r.errors[name] = f"{type(e).__name__}: {str(e)[-1500:]}"
        r.durations[name] = time.monotonic() - t0
        print(f"[bench] {name} done in {r.durations[name]:.0f} s", file=sys.stderr, flush=True)

    try:
        from virtualcard.pytest_plugin import make_softhsm

        hsm = make_softhsm(work / "softhsm")
        exe = driver.build(work)
        w = ways(hsm.module, hsm.env, work, "softhsm")

        def percall() -> None:
            from bench.percall import per_call

            r.percall = per_call(w, hsm.pin, plan.reps, plan.n_sign, plan.n_info)
            r.audit_note = report.verify_audit(work / "audit-softhsm.jsonl")
            r.percall_intents = log_counts(work / "audit-softhsm.jsonl")

        def threads() -> None:
            from bench.percall import thread_scaling

            r.threads = thread_scaling(exe, w, hsm.pin, plan.thread_reps, plan.n_sign * 2, plan.n_info * 4)

        def bind916() -> None:
            from bench.percall import bind916_pattern

            r.bind916 = bind916_pattern(exe, w, hsm.pin, plan.thread_reps, plan.n_bind916)
            r.bind916_audit = report.verify_audit(work / "audit-softhsm.jsonl")

        def startup() -> None:
            from bench.startup import import_profile
            from bench.startup import startup as run

            r.startup = run(exe, w, plan.startup_reps)
            r.startup_imports = import_profile(exe, w["shim"])

        def card() -> None:
            from bench.card import card_rate, virtual_card

            with virtual_card(CARD_LATENCY_MS) as c:
                r.card = card_rate(exe, c, work / "audit-card.jsonl", plan.card_reps, plan.card_sigs)
            r.card_latency_ms = CARD_LATENCY_MS

        def bind() -> None:
            from bench import bind as b

            s = b.setup(work / "bind")
            r.bind_versions = s.versions
            for threads_ in (1, 4):
                r.bind.append(b.bind_runs(s, 1000, threads_, plan.bind_reps))
            r.bind_audit = b.audit_check(s, 1000, 4)
            r.bind_intents = log_counts(s.work / "audit-1000-4.jsonl")
            if plan.bind_big:
                for threads_ in (1, 4):
                    r.bind.append(b.bind_runs(s, 10000, threads_, max(1, plan.bind_reps - 2)))

        def writeahead() -> None:
            from bench.writeahead import run as measure

            r.writeahead = measure(plan.wa_calls, plan.reps)

        def profile() -> None:
            from bench.profile import profile as prof
            from bench.profile import split

            r.split = split(w["shim"], hsm.pin, plan.reps)

            r.profiles = {op: prof(w["shim"], hsm.pin, op, n, work)
                          for op, n in (("sign", plan.n_sign), ("sessioninfo", plan.n_info))}

        def remote_() -> None:
            from bench.remote import remote_rates

            r.remote = remote_rates(exe, hsm.module, hsm.env, hsm.pin, work / "remote", plan.reps,
                                    plan.n_sign // 4, plan.n_info // 10)

        def pool() -> None:
            from bench.pool import bind_pool, pool_rate

            r.pool = pool_rate(exe, CARD_LATENCY_MS, plan.pool_reps, plan.pool_sigs)
            r.card_latency_ms = CARD_LATENCY_MS
            r.pool_bind = bind_pool(POOL_BIND_LATENCY_MS, plan.pool_bind_reps, names=plan.pool_bind_names)

        section("percall", percall)
        section("threads", threads)
        section("bind916", bind916)
        section("startup", startup)
        section("card", card)
        section("bind", bind)
        section("writeahead", writeahead)
        section("profile", profile)
        section("remote", remote_)
        section("pool", pool)
    finally:
        r.total_s = time.monotonic() - t_start
        r.load_end = machine.load()
        report.write(r, Path(a.out))
        print(f"[bench] wrote {a.out} ({r.total_s:.0f} s)", file=sys.stderr)
        if a.keep:
            print(f"[bench] work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if r.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
