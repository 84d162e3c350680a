"""The audit record schema: one JSON object per line, one hash chain per file.

Every producer (the writer) and consumer (verifier, ``show``) takes field names,
kinds, versions and the line encoding from here, so the format is defined once
in code; docs/audit-format.md specifies it for independent verifiers.

A line is compact JSON (``separators=(",", ":")``, ASCII-only so it is valid
UTF-8 whatever the input), fields in the order of ``FIELDS``, terminated by
``\\n``.  ``prev`` is the SHA-256 (hex) of the previous line's exact bytes
without its newline, ``GENESIS`` for the first record of a file.  The chain
hashes bytes; the verifier also re-encodes each record and requires the same
bytes (``canonical_error``), so a record has exactly one valid spelling.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import re
import time
from typing import Any, Final

#: Field order of every record.  ``format`` (version 2 on) is present only on the
#: first record of each epoch in a file; ``error`` only when set.
FIELDS: Final = ("format", "seq", "ts", "epoch", "pid", "uid", "prog", "thread", "kind", "fn",
                 "args", "rv", "dur_us", "src", "error", "prev")
OPTIONAL_FIELDS: Final = frozenset({"format", "error"})

#: The format version this writer writes (see docs/audit-format.md).  A new field or
#: record kind is a new version; a version is never removed from the tables below,
#: so a verifier of any later release still checks every log ever written.
FORMAT_VERSION: Final = 3

#: Record kinds of each format version.  Version 1 is the unversioned format of
#: release 0.1: its epochs carry no ``format`` field.
KINDS_BY_VERSION: Final[dict[int, frozenset[str]]] = {
    1: frozenset({"call", "load", "config", "backend", "gap", "checkpoint", "recovery"}),
    2: frozenset({"call", "load", "config", "backend", "gap", "checkpoint", "recovery", "link"}),
    3: frozenset({"call", "load", "config", "backend", "gap", "checkpoint", "recovery", "link", "intent"}),
}
#: Kinds that name the PKCS#11 function they are about in ``fn``.
FN_KINDS: Final = frozenset({"call", "intent"})
SUPPORTED_VERSIONS: Final = tuple(sorted(KINDS_BY_VERSION))
KINDS: Final = KINDS_BY_VERSION[FORMAT_VERSION]
ALL_KINDS: Final = frozenset().union(*KINDS_BY_VERSION.values())
SRCS: Final = frozenset({"card", "soft"})

#: From version 2 a writer never writes a line longer than this (newline included):
#: oversized ``args`` are replaced by their length and SHA-256.  It is what lets a
#: writer find the chain head by reading a bounded tail.
MAX_LINE: Final = 65536

FIRST_SEQ: Final = 1
GENESIS: Final = "0" * 64

EPOCH_RE: Final = re.compile(r"[0-9a-f]{16}\Z")
HEX64_RE: Final = re.compile(r"[0-9a-f]{64}\Z")
TS_RE: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")

REDACTED: Final = "<redacted>"

#: The ``args`` member of a ``load`` record (and of a later ``C_Initialize`` or ``C_Finalize``
#: ``call`` record) that counts the discovery calls the C loader answered without Python
#: (shim/discovery.py; docs/audit-format.md section 4.4).  ``args`` are free form in every
#: version, so this member is no new field and needs no new format version: a verifier of any
#: version checks these records as before.
DISCOVERY: Final = "discovery"


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

#: ENCODER's C encoder (None where json has none), built once: ``ENCODER.encode`` builds it
#: again for every value (through ``iterencode``).  Same encoder, same arguments, so the same
#: text; no circular-reference markers (a cycle raises RecursionError; the caller falls back
#: to ENCODER, which names it).
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
C_ENCODE: Final = (_make_encoder(None, ENCODER.default, json.encoder.encode_basestring_ascii, ENCODER.indent,
                                 ENCODER.key_separator, ENCODER.item_separator, ENCODER.sort_keys, ENCODER.skipkeys,
                                 ENCODER.allow_nan)
                   if _make_encoder is not None else None)


def encode_value(value: Any) -> str:
    """``ENCODER.encode(value)`` for a dict or list, in one C call where the C encoder exists
    (``"".join(C_ENCODE(value, 0))``, which the writer's hot path calls itself)."""
    if C_ENCODE is None:
        return ENCODER.encode(value)
    return "".join(C_ENCODE(value, 0))


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


def canonical_error(body: bytes, rec: dict[str, Any]) -> str | None:
    """Why ``body`` (a line without newline) is not the writer's exact encoding of ``rec``.

    Every version's writer produced exactly ``ENCODER.encode(record)``: a line
    in any other form (duplicate keys, other spacing or escapes, CRLF) was
    written by something else, so it counts as tampered.
    """
    canon = ENCODER.encode(rec).encode("ascii")
    if canon == body:
        return None
    at = next(  # first differing byte
        (i for i, (a, b) in enumerate(zip(canon, body, strict=False)) if a != b), min(len(canon), len(body)))
    return f"not in the writer's canonical encoding (differs from it at byte {at})"


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
    if "format" in rec and not _is_int(rec["format"]):
        return "format is not an integer"
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
    if rec["kind"] not in ALL_KINDS:
        return f"unknown kind {rec['kind']!r}"
    if rec["kind"] in FN_KINDS and not isinstance(rec["fn"], str):
        return f"{rec['kind']} record without fn"
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
