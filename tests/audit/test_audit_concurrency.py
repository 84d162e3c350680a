"""Several processes and threads append to one file: one global chain, seq consecutive."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import defaultdict
from pathlib import Path

from audit_helpers import read_lines, rec, write_calls

from shim.audit.verify import verify
from shim.audit.writer import AuditWriter

PROCS, THREADS, PER_THREAD = 2, 4, 2000


def _append_worker(path: str, tag: str) -> None:
    """Runs in a spawned process: THREADS threads share one writer."""
    w = AuditWriter(path, program=f"proc-{tag}")

    def run(t: int) -> None:
        for i in range(PER_THREAD):
            w.write("call", fn="C_Sign", args={"t": t, "i": i}, rv="CKR_OK", dur_us=i, src="soft")

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()


def _assert_per_writer_order(path: Path) -> None:
    """Each (pid, thread)'s records appear in the order it wrote them."""
    seen: dict[tuple[int, int], list[int]] = defaultdict(list)
    for line in read_lines(path):
        r = rec(line)
        if r["kind"] == "call":
            seen[(r["pid"], r["thread"])].append(r["args"]["i"])
    for ids in seen.values():
        assert ids == sorted(ids)


def test_two_processes_times_four_threads_share_one_chain(log: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_worker, args=(str(log), str(n))) for n in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    r = verify(str(log))
    assert r.ok, r.reason
    total = PROCS * THREADS * PER_THREAD
    assert r.records == total and r.last_seq == total  # consecutive: verify checks seq += 1
    assert sorted(r.epochs.values()) == [THREADS * PER_THREAD] * PROCS
    lines = read_lines(log)
    assert [rec(x)["seq"] for x in lines] == list(range(1, total + 1))
    assert len({rec(x)["pid"] for x in lines}) == PROCS
    _assert_per_writer_order(log)


def test_forked_child_continues_the_chain_with_its_own_epoch(log: Path) -> None:
    w = AuditWriter(str(log), program="named")
    write_calls(w, 3)
    parent_epoch = w.epoch
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert w.epoch != parent_epoch and w.pid == os.getpid()
            write_calls(w, 5, 100)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    write_calls(w, 3, 200)
    w.close()
    r = verify(str(log))
    assert r.ok and r.records == 11
    assert r.epochs == {parent_epoch: 6, **{e: 5 for e in r.epochs if e != parent_epoch}}
    assert {rec(x)["pid"] for x in read_lines(log)} == {os.getpid(), pid}


def test_parent_and_forked_child_writing_concurrently_exclude_each_other(log: Path) -> None:
    """Proves the child's reopen: flock on a shared open file description would not exclude."""
    w = AuditWriter(str(log))
    w.write("load")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            write_calls(w, 2000)
            code = 0
        finally:
            os._exit(code)
    write_calls(w, 2000)
    assert os.waitpid(pid, 0)[1] == 0
    w.close()
    r = verify(str(log))
    assert r.ok, r.reason
    assert r.records == 4001 and len(r.epochs) == 2


def test_fork_while_other_threads_write(log: Path) -> None:
    """A thread holding the writer's lock at fork time must not deadlock the child."""
    w = AuditWriter(str(log))
    stop = threading.Event()

    def spin() -> None:
        i = 0
        while not stop.is_set():
            w.write("call", fn="C_Sign", args={"i": i}, rv="CKR_OK", dur_us=0, src="card")
            i += 1

    threads = [threading.Thread(target=spin) for _ in range(3)]
    for t in threads:
        t.start()
    children = []
    try:
        for _ in range(10):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    write_calls(w, 20, fn="C_Verify")
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(os.waitpid(c, 0)[1] == 0 for c in children)
    w.close()
    r = verify(str(log))
    assert r.ok, r.reason
    assert r.fns["C_Verify"] == 200 and len(r.epochs) == 11
