"""Tamper evidence end to end, on logs the shim wrote while real clients signed.

Each kind of tampering is applied at several random positions of a copy of a
two-process log; ``verify`` must fail and name the first bad seq, and the CLI
must say so (exit 1, ``first bad record: seq N``).
"""

from __future__ import annotations

import random
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from rel_helpers import SIGNER, ShimRun, Token, audit_cli, record_figure, scaled, signer_env

from shim.audit import schema
from shim.audit.verify import verify

Lines = list[bytes]


def rec(line: bytes) -> dict:  # type: ignore[type-arg]
    r = schema.parse_line(line)
    assert r is not None
    return r


def rechain(lines: Lines, start: int) -> Lines:
    """Recompute prev from ``start`` on, as an attacker with write access would."""
    out = list(lines[:start])
    for line in lines[start:]:
        r = rec(line)
        r["prev"] = schema.line_hash(out[-1].rstrip(b"\n")) if out else schema.GENESIS
        out.append(schema.encode_line(r))
    return out


def _edit(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    i = k - 1
    lines[i] = re.sub(rb'"thread":(\d+)', lambda m: b'"thread":%d' % (int(m.group(1)) + 1), lines[i], count=1)
    return lines, k


def _delete(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    del lines[k - 1]
    return lines, k


def _insert(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    forged = rec(lines[k - 2])
    forged.update(seq=k, prev=schema.line_hash(lines[k - 2].rstrip(b"\n")), rv="CKR_OK", fn="C_Sign")
    lines.insert(k - 1, schema.encode_line(forged))
    return lines, k


def _reorder(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    lines[k - 1], lines[k] = lines[k], lines[k - 1]
    return lines, k


def _duplicate(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    lines.insert(k, lines[k - 1])
    return lines, k + 1 - 1  # the copy carries seq k again


def _splice(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    lines[k - 1:k + 2] = other[k - 1:k + 2]
    return lines, k


def _truncate_middle(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    del lines[k - 1:k + 4]
    return lines, k


def _rechain_new_epoch(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    epoch = secrets.token_hex(8)
    for i in range(k - 1, k + 2):
        r = rec(lines[i])
        r["epoch"] = epoch
        if i == k - 1:  # the new epoch's first record says its version, as a writer's would
            r["format"] = schema.FORMAT_VERSION
        lines[i] = schema.encode_line(r)
    return rechain(lines, k - 1), k


def _rechain_other_process_epoch(lines: Lines, k: int, other: Lines) -> tuple[Lines, int]:
    mine = rec(lines[k - 1])["epoch"]
    theirs = next(rec(x)["epoch"] for x in lines if rec(x)["epoch"] != mine)
    r = rec(lines[k - 1])
    r["epoch"] = theirs
    lines[k - 1] = schema.encode_line(r)
    return rechain(lines, k - 1), k


KINDS: dict[str, Callable[[Lines, int, Lines], tuple[Lines, int]]] = {
    "edit": _edit, "delete": _delete, "insert": _insert, "reorder": _reorder, "duplicate": _duplicate,
    "splice": _splice, "truncate_middle": _truncate_middle, "rechain_new_epoch": _rechain_new_epoch,
    "rechain_other_epoch": _rechain_other_process_epoch,
}


@pytest.fixture(scope="module")
def logs(token: Token, tmp_path_factory: pytest.TempPathFactory) -> tuple[Lines, Lines]:
    """A log written by two signing processes through the shim, and another log to splice from."""
    out = []
    for name in ("main", "other"):
        d = tmp_path_factory.mktemp(f"tamper-{name}")
        run = ShimRun.make(d, token)
        for _ in range(2):
            run.python(SIGNER, "--out", str(d / "sigs.jsonl"), "--count", "8", "--threads", "2",
                       extra_env=signer_env(run))
        assert verify(str(run.audit_log)).ok
        out.append(run.audit_log.read_bytes().splitlines(keepends=True))
    return out[0], out[1]


def test_every_kind_of_tampering_is_detected_and_the_first_bad_seq_named(
        logs: tuple[Lines, Lines], tmp_path: Path) -> None:
    main, other = logs
    epochs = [rec(x)["epoch"] for x in main]
    # positions whose neighbourhood lies in one process's epoch, so each edit is unambiguous
    positions = [k for k in range(3, len(main) - 6) if len(set(epochs[k - 3:k + 5])) == 1]
    rng = random.Random()
    per_kind = scaled(10)
    cases = 0
    for kind, mutate in KINDS.items():
        for j, k in enumerate(rng.sample(positions, min(per_kind, len(positions)))):
            lines, want = mutate(list(main), k, other)
            path = tmp_path / f"{kind}-{k}.jsonl"
            path.write_bytes(b"".join(lines))
            r = verify(str(path))
            assert not r.ok, f"{kind} at seq {k} not detected"
            assert r.first_bad_seq == want, f"{kind} at seq {k}: named seq {r.first_bad_seq}: {r.reason}"
            if j == 0:  # the operator's view, once per kind
                cli = audit_cli("verify", str(path))
                assert cli.returncode == 1 and f"first bad record: seq {want}: " in cli.stdout, cli.stdout
            cases += 1
    record_figure("tamper", {"kinds": len(KINDS), "cases": cases, "log_records": len(main)})


def test_a_rechained_splice_is_detected_within_the_spliced_run(logs: tuple[Lines, Lines], tmp_path: Path) -> None:
    """An attacker who renumbers and re-chains the foreign records still breaks the chain
    where the original log resumes; the verifier names a record of the spliced run."""
    main, other = logs
    k = len(main) // 2
    lines = list(main)
    foreign = []
    for n, line in enumerate(other[k - 1:k + 2]):
        r = rec(line)
        r["seq"] = k + n
        foreign.append(schema.encode_line(r))
    lines[k - 1:k + 2] = foreign
    lines = rechain(lines, k - 1)[:k + 2] + lines[k + 2:]
    path = tmp_path / "rechained-splice.jsonl"
    path.write_bytes(b"".join(lines))
    r = verify(str(path))
    assert not r.ok and r.first_bad_seq is not None and k <= r.first_bad_seq <= k + 2, r.reason
