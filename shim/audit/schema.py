"""The audit record schema: one JSON object per line, one hash chain per file.

Every producer (the writer) and consumer (verifier, ``show``) takes field names,
kinds and the line encoding from here, so the format is defined exactly once.

A line is compact JSON (``separators=(",", ":")``, ASCII-only so it is valid
UTF-8 whatever the input), fields in the order of ``FIELDS``, terminated by
``\\n``.  ``prev`` is the SHA-256 (hex) of the previous line's exact bytes
without its newline, ``GENESIS`` for the first record of a file.  The chain
hashes bytes, not re-serialised JSON, so the verifier never has to reproduce
the encoder.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, Final

#: Field order of every record (``error`` is present only when set).
FIELDS: Final = ("seq", "ts", "epoch", "pid", "uid", "prog", "thread", "kind", "fn",
                 "args", "rv", "dur_us", "src", "error", "prev")
OPTIONAL_FIELDS: Final = frozenset({"error"})

KINDS: Final = frozenset({"call", "load", "config", "backend", "gap", "checkpoint", "recovery"})
SRCS: Final = frozenset({"card", "soft"})

FIRST_SEQ: Final = 1
GENESIS: Final = "0" * 64

EPOCH_RE: Final = re.compile(r"[0-9a-f]{16}\Z")
HEX64_RE: Final = re.compile(r"[0-9a-f]{64}\Z")
TS_RE: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")

REDACTED: Final = "<redacted>"


def line_hash(line: bytes) -> str:
    """Chain value of one line: hex SHA-256 of its bytes, newline excluded."""
    return hashlib.sha256(line[:-1] if line.endswith(b"\n") else line).hexdigest()


def _default(obj: object) -> object:
    # Never serialise raw bytes or arbitrary objects: bytes may be key material or
    # a PIN, and repr() of a foreign object may embed either.
    if isinstance(obj, bytes | bytearray | memoryview):
        return f"<bytes len={len(obj)}>"
    return f"<{type(obj).__name__}>"


#: One encoder instance: json.dumps() with keyword arguments builds a new encoder
#: per call, which costs about a microsecond on the hot path.
ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=_default)


class _TsCache:
    """UTC ISO-8601 timestamps with µs; strftime runs once per second, not per record."""

    __slots__ = ("sec", "text")

    def __init__(self) -> None:
        self.sec = -1
        self.text = ""

    def now(self) -> str:
        # Not thread-safe on its own: the writer calls it under its lock.
        sec, ns = divmod(time.time_ns(), 1_000_000_000)
        if sec != self.sec:
            self.sec = sec
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self.text}.{ns // 1000:06d}Z"


def encode_line(record: dict[str, Any]) -> bytes:
    """Encode a complete record (all FIELDS, in order) as one line with newline.

    The writer assembles lines from pre-encoded pieces for speed; this is the
    reference encoding it must match, used by tests and tools.
    """
    ordered = {k: record[k] for k in FIELDS if k in record}
    return ENCODER.encode(ordered).encode("ascii") + b"\n"


def parse_line(line: bytes) -> dict[str, Any] | None:
    """The record on ``line`` (newline optional), or None if it is not a JSON object."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def schema_error(rec: dict[str, Any]) -> str | None:
    """Why ``rec`` does not follow the schema, or None.  Field order is checked too."""
    keys = list(rec)
    expected = [k for k in FIELDS if k in rec or k not in OPTIONAL_FIELDS]
    if keys != expected:
        return f"fields {keys} differ from schema {expected}"
    if not _is_int(rec["seq"]) or rec["seq"] < FIRST_SEQ:
        return "seq is not a positive integer"
    if not isinstance(rec["ts"], str) or not TS_RE.match(rec["ts"]):
        return "ts is not UTC ISO-8601 with microseconds"
    if not isinstance(rec["epoch"], str) or not EPOCH_RE.match(rec["epoch"]):
        return "epoch is not 16 lowercase hex digits"
    for k in ("pid", "uid", "thread"):
        if not _is_int(rec[k]):
            return f"{k} is not an integer"
    if not isinstance(rec["prog"], str):
        return "prog is not a string"
    if rec["kind"] not in KINDS:
        return f"unknown kind {rec['kind']!r}"
    if rec["kind"] == "call" and not isinstance(rec["fn"], str):
        return "call record without fn"
    if rec["fn"] is not None and not isinstance(rec["fn"], str):
        return "fn is not a string"
    if rec["args"] is not None and not isinstance(rec["args"], dict):
        return "args is not an object"
    if rec["rv"] is not None and not isinstance(rec["rv"], str):
        return "rv is not a string"
    if rec["dur_us"] is not None and not _is_int(rec["dur_us"]):
        return "dur_us is not an integer"
    if rec["src"] is not None and rec["src"] not in SRCS:
        return f"unknown src {rec['src']!r}"
    if "error" in rec and not isinstance(rec["error"], str):
        return "error is not a string"
    if not isinstance(rec["prev"], str) or not HEX64_RE.match(rec["prev"]):
        return "prev is not a hex SHA-256"
    return None
