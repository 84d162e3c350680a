"""A readable view of an audit log, with filters; does not verify (use ``verify``)."""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from shim.audit import files, schema


@dataclass
class Filter:
    fns: frozenset[str] = frozenset()  # "C_Sign" or "Sign"
    rvs: frozenset[str] = frozenset()  # "CKR_PIN_INCORRECT" or "PIN_INCORRECT"
    pids: frozenset[int] = frozenset()
    kinds: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Accept names with or without their prefix: operators type "Sign" or "OK".
        self.fns = frozenset(f if f.startswith("C_") else f"C_{f}" for f in self.fns)
        self.rvs = frozenset(r if r.startswith("CKR_") else f"CKR_{r}" for r in self.rvs)

    def match(self, rec: dict[str, Any]) -> bool:
        return ((not self.fns or rec.get("fn") in self.fns)
                and (not self.rvs or rec.get("rv") in self.rvs)
                and (not self.pids or rec.get("pid") in self.pids)
                and (not self.kinds or rec.get("kind") in self.kinds))


def records(path: str) -> Iterator[tuple[int, bytes, dict[str, Any] | None]]:
    """(byte offset, line without newline, record or None for a torn/invalid line)."""
    off = 0
    with os.fdopen(files.open_read(path), "rb") as f:
        for raw in f:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            rec = schema.parse_line(line)
            yield off, line, rec if rec is not None and schema.schema_error(rec) is None else None
            off += len(raw)


def safe(text: str) -> str:
    """``text`` with every control, format or separator character escaped (``\\x1b``, ``\\u202e``).

    Fields such as ``prog`` come from other processes: printed raw, a process
    name could drive the operator's terminal or reorder what it shows.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() and unicodedata.category(c)[0] not in "CZ" or c == " "
                   else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000
                         else f"\\U{ord(c):08x}") for c in text)


def short_args(args: dict[str, Any] | None, width: int = 60) -> str:
    if not args:
        return ""
    text = " ".join(f"{k}={v if isinstance(v, str | int | float) else json.dumps(v)}"
                    for k, v in args.items())
    text = safe(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def show(path: str, flt: Filter, out: TextIO, *, as_json: bool = False) -> int:
    """Print matching records; returns how many were printed."""
    n = 0
    if not as_json:
        out.write(f"{'seq':>7} {'ts':26} {'pid':>7} {'prog':12} {'fn':24} {'rv':24} "
                  f"{'dur':>8} {'src':4} args\n")
    for off, line, rec in records(path):
        if rec is None:
            if not (flt.fns or flt.rvs or flt.pids or flt.kinds):
                out.write(f"{'?':>7} <not a record: {len(line)} bytes at offset {off}>\n" if not as_json
                          else json.dumps({"invalid_line_offset": off, "length": len(line)}) + "\n")
            continue
        if not flt.match(rec):
            continue
        n += 1
        if as_json:
            out.write(safe(line.decode("ascii", "replace")) + "\n")
            continue
        what = safe(rec["fn"] or f"[{rec['kind']}]")
        dur = "" if rec["dur_us"] is None else f"{rec['dur_us']}µs"
        out.write(f"{rec['seq']:>7} {rec['ts']:26} {rec['pid']:>7} {safe(rec['prog'])[:12]:12} {what[:24]:24} "
                  f"{safe(rec['rv'] or '')[:24]:24} {dur:>8} {rec['src'] or '':4} {short_args(rec['args'])}\n")
    return n
