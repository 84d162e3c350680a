"""Sequence files: audit-shaped call records with symbolic handles and placeholders.

A record is ``{"kind": "call", "fn": "C_Sign", "args": {...}, "rv": "CKR_OK"}`` as the shim's
audit log writes it, plus optional ``expect`` (``ok`` | ``error`` | ``any`` | a ``CKR_*`` name,
default derived from ``rv``) and ``check`` (consumer requirements on outputs, see
:mod:`conformance.checks`).  Records of other kinds (``meta``, ``load``, ...) are kept but not
replayed.  Values in ``args``:

- ``$slot``, ``$s1``, ``$o1`` ...: handles; an output field (``opened``, ``found``, ``object``,
  ``copy``) binds the symbol, later inputs use it.
- ``${ec.label}``, ``${rsa.id}``, ``${ec.params}``, ``${ec.point}``, ``${rsa.modulus}`` ...: the
  card's keys; ``${digest}`` / ``${sig}``: the context's last digest / signature output;
  ``${data}`` (or a bare ``data_len``): fresh data of that length, drawn by the test.
- ``hex:...``: literal bytes; ``<N bytes>``: a value of N bytes (buffer size only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shim.constants import CKR

SEQUENCES_DIR = Path(__file__).resolve().parent / "sequences"
REPLAYED = "call"


@dataclass
class Step:
    fn: str
    args: dict[str, Any]
    rv: str | None = None
    expect: str | None = None
    check: dict[str, Any] = field(default_factory=dict)
    ctx: str = "main"  # thread/context name: steps of one ctx share handles and ${digest}/${sig}
    note: str | None = None

    @property
    def expectation(self) -> str:
        """``ok`` | ``error`` | ``any`` | ``CKR_*``: what a conforming run must return."""
        if self.expect:
            return self.expect
        if self.rv is None or self.rv == "CKR_OK":
            return "ok"
        return "error"

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"kind": REPLAYED, "fn": self.fn, "args": self.args, "rv": self.rv}
        if self.expect:
            rec["expect"] = self.expect
        if self.check:
            rec["check"] = self.check
        if self.ctx != "main":
            rec["ctx"] = self.ctx
        if self.note:
            rec["note"] = self.note
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Step:
        return cls(fn=rec["fn"], args=dict(rec.get("args") or {}), rv=rec.get("rv"), expect=rec.get("expect"),
                   check=dict(rec.get("check") or {}), ctx=rec.get("ctx", "main"), note=rec.get("note"))


@dataclass
class Sequence:
    name: str
    steps: list[Step]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def needs(self) -> set[str]:
        """Card capabilities the sequence needs (``meta.needs``): ``generate``, ``write``, ``rsa``, ``ec``."""
        return set(self.meta.get("needs", []))


def matches(expectation: str, rv: int) -> bool:
    if expectation == "any":
        return True
    if expectation == "ok":
        return rv == CKR.OK
    if expectation == "error":
        return rv != CKR.OK
    if "|" in expectation:
        return any(matches(e, rv) for e in expectation.split("|"))
    return rv == CKR[expectation.removeprefix("CKR_")]


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: {e}") from e


def load(path: Path) -> Sequence:
    meta: dict[str, Any] = {}
    steps: list[Step] = []
    for rec in read_records(path):
        if rec.get("kind") == "meta":
            meta.update(rec.get("args") or {})
        elif rec.get("kind") == REPLAYED:
            steps.append(Step.from_record(rec))
    return Sequence(path.stem, steps, meta)


def dump(seq: Sequence, path: Path) -> None:
    lines = [json.dumps({"kind": "meta", "args": seq.meta}, sort_keys=False)] if seq.meta else []
    lines += [json.dumps(s.to_record()) for s in seq.steps]
    path.write_text("\n".join(lines) + "\n")


def all_sequences(directory: Path = SEQUENCES_DIR) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def contexts(steps: Iterable[Step]) -> list[str]:
    seen: list[str] = []
    for s in steps:
        if s.ctx not in seen:
            seen.append(s.ctx)
    return seen
