"""Verify an audit log: schema, encoding, global seq, hash chain, epochs, versions, checkpoints.

The format is specified in docs/audit-format.md; this module implements it
for every format version ever released (``schema.KINDS_BY_VERSION``).
Rules, checked in one streaming pass (the first violation stops the pass):

1. Every complete line is a record (``schema.schema_error``), except a *torn
   region*: consecutive non-record lines immediately followed by a
   ``kind="recovery"`` record whose args name the region (byte offset, length,
   SHA-256) and the hash of the record before it, and whose ``prev`` is the
   region's hash.  Such regions are accepted and reported in ``recovered``.
   Every record is exactly the writer's canonical encoding of itself.
2. ``seq`` starts at 1 and increases by exactly 1 per record across the file;
   a file that replaces a rotated one starts with a ``link`` record instead,
   at the seq after the old file's head.
3. ``prev`` is the SHA-256 of the previous line's bytes (``GENESIS`` first,
   the old file's head for a ``link``).
4. Epoch binding: an epoch is one writer in one process, so all records of an
   epoch share pid, uid and prog; and once a pid has moved on to a new epoch
   (fork, reopen), its earlier epoch never reappears.  A record moved into
   another process's epoch is named even when the chain was recomputed.
   Consequences for deployment: one AuditWriter per file per process, and one
   file is not shared by processes of different PID namespaces.
5. Versions: an epoch's first record in the file says its format version in
   a leading ``format`` field (none: version 1); no other record has one.
   Each record must be a kind of its epoch's version.  Epochs of
   different versions may interleave (an upgrade while older processes
   still append); ``versions`` reports where each version starts.
6. ``checkpoint`` records name the head they follow (``head_seq`` = seq-1,
   ``head_sha256`` = prev); with a key, every signature must verify.  Entries
   of the detached checkpoint file must still match the log (same hash at
   ``head_seq``, same checkpoint line at ``seq``), which detects truncation
   or rewriting before the last checkpoint.

A torn last line (no trailing newline) is not tampering: it is reported in
``torn`` (exit code 3) after every complete record before it was checked.

What a plain hash chain cannot prove: anyone able to write the file can
rewrite *every* record from some point on with a recomputed chain, or cut
the end of the file (or edit its last record).  Only signed checkpoints,
verified against an off-host copy of the checkpoint file and a key held off
the host, catch that, and only for records up to the last checkpoint.  The
result says so in ``unproven``, and ``require_checkpoint`` turns it into a
failure.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shim.audit import files, schema, signing

_DIAG_LOOKAHEAD = 100_000  # lines scanned, after a failure only, to tell reordering from deletion


@dataclass
class TornLine:
    """A non-record byte range: a torn write (or what a recovery record says was one)."""

    offset: int
    length: int
    sha256: str
    recovery_seq: int | None = None  # seq of the recovery record that closed it


@dataclass
class VerifyResult:
    ok: bool = True  # every complete record intact (a torn tail alone keeps ok True)
    records: int = 0
    last_seq: int = 0
    head: str = schema.GENESIS  # hash of the last record line
    epochs: dict[str, int] = field(default_factory=dict)  # epoch -> record count
    kinds: Counter[str] = field(default_factory=Counter)
    fns: Counter[str] = field(default_factory=Counter)
    srcs: Counter[str] = field(default_factory=Counter)  # "card", "soft", "-"
    rvs: Counter[str] = field(default_factory=Counter)
    first_bad_seq: int | None = None
    first_bad_line: int | None = None
    reason: str | None = None
    torn: TornLine | None = None  # unrecovered torn last line
    recovered: list[TornLine] = field(default_factory=list)
    lost_records: int = 0  # sum of fail-open gap counts
    checkpoints: int = 0
    checkpoints_verified: int = 0  # signatures checked against the given key
    last_checkpoint_seq: int | None = None
    warnings: list[str] = field(default_factory=list)
    first_seq: int = schema.FIRST_SEQ
    link: dict[str, Any] | None = None  # args of the link record the file starts with
    versions: dict[int, int] = field(default_factory=dict)  # format version -> epochs
    version_starts: list[tuple[int, int]] = field(default_factory=list)  # (seq, version) where records change version
    unsupported: int | None = None  # a format version this verifier does not know
    unproven: list[str] = field(default_factory=list)  # what this verification could not prove
    proof_required: bool = False  # require_checkpoint was given and no checkpoint proved the log

    @property
    def exit_code(self) -> int:
        """0 intact, 1 tampered, 3 only a torn last line, 4 proof required but missing,
        5 a format version this verifier does not know."""
        if self.unsupported is not None:
            return 5
        if not self.ok:
            return 1
        if self.proof_required:
            return 4
        return 3 if self.torn is not None else 0


class _Fail(Exception):
    def __init__(self, seq: int, line: int, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.line, self.reason = seq, line, reason


class _Unsupported(_Fail):
    def __init__(self, seq: int, line: int, version: object) -> None:
        super().__init__(seq, line, f"format version {version!r} is not known to this verifier (it knows "
                         f"{', '.join(map(str, schema.SUPPORTED_VERSIONS))}): use a newer sc4dnssec")
        self.version = version


class _Lines:
    """(line number, offset, bytes with newline) with lookahead."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._buf: list[tuple[int, int, bytes]] = []
        self._n = 0
        self._off = 0

    def _read(self) -> tuple[int, int, bytes] | None:
        raw = self._f.readline()
        if not raw:
            return None
        self._n += 1
        item = (self._n, self._off, raw)
        self._off += len(raw)
        return item

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        return self

    def __next__(self) -> tuple[int, int, bytes]:
        item = self._buf.pop(0) if self._buf else self._read()
        if item is None:
            raise StopIteration
        return item

    def peek(self, i: int = 0) -> tuple[int, int, bytes] | None:
        while len(self._buf) <= i:
            item = self._read()
            if item is None:
                return None
            self._buf.append(item)
        return self._buf[i]


class _Verifier:
    def __init__(self, key: Ed25519PublicKey | None, detached: list[dict[str, Any]]) -> None:
        self.key = key
        self.r = VerifyResult()
        self.expected = schema.FIRST_SEQ
        self.prev = schema.GENESIS  # what the next record's prev must be
        self.epoch_owner: dict[str, tuple[int, int, str]] = {}  # epoch -> (pid, uid, prog)
        self.pid_epoch: dict[int, str] = {}
        self.epoch_first: dict[str, tuple[int, int]] = {}  # epoch -> (seq, line) of its first record
        self.detached = detached
        self.watch = {e["head_seq"] for e in detached} | {e["seq"] for e in detached}
        self.seen: dict[int, tuple[str, dict[str, Any]]] = {}  # watched seq -> (line hash, record)
        self.epoch_version: dict[str, int] = {}
        self.last_version: int | None = None
        self.before_file = 0  # detached entries that cover an earlier, rotated file

    def run(self, lines: _Lines) -> VerifyResult:
        region: list[tuple[int, int, bytes]] = []  # pending non-record lines
        for item in lines:
            lineno, off, raw = item
            if not raw.endswith(b"\n"):
                start = region[0][1] if region else off
                data = b"".join(r[2] for r in region) + raw
                self.r.torn = TornLine(start, len(data), schema.line_hash(data))
                region = []
                break
            body = raw[:-1]
            rec = schema.parse_line(body)
            err = "not JSON" if rec is None else schema.schema_error(rec)
            if rec is None or err is not None:
                region.append(item)
                continue
            if region:
                self._recovery(rec, region)
                region = []
            elif rec["kind"] == "recovery":
                raise _Fail(rec["seq"], lineno, "recovery record without a torn line before it")
            self._record(rec, body, lineno, lines)
        if region:
            lineno, _, raw = region[0]
            rec = schema.parse_line(raw[:-1])
            why = "not JSON" if rec is None else schema.schema_error(rec)
            raise _Fail(self.expected, lineno, f"line {lineno} is not a valid record ({why})")
        return self.r

    def _recovery(self, rec: dict[str, Any], region: list[tuple[int, int, bytes]]) -> None:
        lineno = region[0][0]
        if rec["kind"] != "recovery":
            first = schema.parse_line(region[0][2][:-1])
            why = "not JSON" if first is None else schema.schema_error(first)
            raise _Fail(self.expected, lineno, f"line {lineno} is not a valid record ({why})")
        data = b"".join(r[2] for r in region)[:-1]  # the region, without the newline before the recovery
        h = schema.line_hash(data)
        args = rec["args"] or {}
        want = {"torn_offset": region[0][1], "torn_len": len(data), "torn_sha256": h,
                "after_sha256": self.prev}
        bad = [k for k, v in want.items() if args.get(k) != v]
        if bad or rec["prev"] != h:
            raise _Fail(rec["seq"], lineno,
                        f"recovery record does not match the torn line at offset {region[0][1]} "
                        f"({', '.join(bad) or 'prev'} differ)")
        self.r.recovered.append(TornLine(region[0][1], len(data), h, rec["seq"]))
        self.prev = h

    def _record(self, rec: dict[str, Any], body: bytes, lineno: int, lines: _Lines) -> None:
        seq, epoch = rec["seq"], rec["epoch"]
        bad_encoding = schema.canonical_error(body, rec)
        if bad_encoding is not None:
            raise _Fail(seq, lineno, f"seq {seq} is {bad_encoding}")
        if self.r.records == 0 and rec["kind"] == "link" and not self.r.recovered:
            self._link_start(rec, lineno)
        if seq != self.expected:
            self._seq_mismatch(rec, body, lineno, lines)
        if rec["prev"] != self.prev:
            self._chain_break(rec, body, lineno, lines)
        owner = (rec["pid"], rec["uid"], rec["prog"])
        known = self.epoch_owner.setdefault(epoch, owner)
        if known != owner:
            raise _Fail(seq, lineno, f"record claims epoch {epoch} of pid {known[0]} uid {known[1]} "
                        f"prog {known[2]!r} but has pid {owner[0]} uid {owner[1]} prog {owner[2]!r} "
                        "(re-chained under another epoch)")
        cur = self.pid_epoch.get(rec["pid"])
        if cur != epoch:
            if epoch in self.r.epochs:
                # Never legitimate; the records of the interloping epoch are the suspects.
                first = self.epoch_first[cur] if cur is not None else (seq, lineno)
                raise _Fail(first[0], first[1], f"pid {rec['pid']} switched to epoch {cur} at seq "
                            f"{first[0]} and back to its earlier epoch {epoch} at seq {seq} "
                            "(re-chained under another epoch)")
            self.pid_epoch[rec["pid"]] = epoch
            self.epoch_first[epoch] = (seq, lineno)
        kind = rec["kind"]
        self._version(rec, lineno)
        if kind == "checkpoint":
            self._checkpoint(rec, lineno)
        elif kind == "gap":
            lost = (rec["args"] or {}).get("lost")
            if not isinstance(lost, int) or lost < 1:
                raise _Fail(seq, lineno, "gap record without a positive lost count")
            self.r.lost_records += lost
        h = schema.line_hash(body)
        if seq in self.watch:
            self.seen[seq] = (h, rec)
        r = self.r
        r.records += 1
        r.last_seq, r.head = seq, h
        r.epochs[epoch] = r.epochs.get(epoch, 0) + 1
        r.kinds[kind] += 1
        if rec["fn"] is not None:
            r.fns[rec["fn"]] += 1
        r.srcs[rec["src"] or "-"] += 1
        if rec["rv"] is not None:
            r.rvs[rec["rv"]] += 1
        self.expected, self.prev = seq + 1, h

    def _link_start(self, rec: dict[str, Any], lineno: int) -> None:
        """A file that replaces a rotated one: its chain continues from the head its link names."""
        args = rec["args"] or {}
        hs, hh = args.get("old_head_seq"), args.get("old_head_sha256")
        if not (isinstance(hs, int) and not isinstance(hs, bool) and hs >= schema.FIRST_SEQ
                and isinstance(hh, str) and schema.HEX64_RE.match(hh)):
            raise _Fail(rec["seq"], lineno, "link record does not name the old file's head")
        if rec["seq"] != hs + 1 or rec["prev"] != hh:
            raise _Fail(rec["seq"], lineno, "link record does not chain to the head it names")
        self.expected, self.prev = hs + 1, hh
        self.r.first_seq, self.r.link = hs + 1, dict(args)

    def _version(self, rec: dict[str, Any], lineno: int) -> None:
        """The epoch's first record in the file says its format version; check the record against it."""
        seq, epoch, kind = rec["seq"], rec["epoch"], rec["kind"]
        version = self.epoch_version.get(epoch)
        if version is None:
            version = rec.get("format", 1)
            if version not in schema.KINDS_BY_VERSION or version == 1 and "format" in rec:
                raise _Unsupported(seq, lineno, version)
            self.epoch_version[epoch] = version
            self.r.versions[version] = self.r.versions.get(version, 0) + 1
        elif "format" in rec:
            raise _Fail(seq, lineno, f"seq {seq} declares a format but is not the first record of its epoch "
                        f"{epoch}")
        if version != self.last_version:  # interleaved epochs of different versions: each change
            self.r.version_starts.append((seq, version))
            self.last_version = version
        if kind not in schema.KINDS_BY_VERSION[version]:
            raise _Fail(seq, lineno, f"kind {kind!r} does not exist in format version {version} "
                        f"(the version of epoch {epoch})")
        if kind == "link" and self.r.records:
            raise _Fail(seq, lineno, "link record in the middle of a file (a link only starts a file)")

    def _seq_mismatch(self, rec: dict[str, Any], body: bytes, lineno: int, lines: _Lines) -> None:
        seq, want = rec["seq"], self.expected
        if seq < want and rec["epoch"] in self.r.epochs:
            what = "duplicate of the previous line" if schema.line_hash(body) == self.prev \
                else "inserted or replayed record"
            raise _Fail(seq, lineno, f"seq {seq} appears again at line {lineno}: {what}")
        if seq < want:
            raise _Fail(want, lineno, f"line {lineno} has seq {seq} of unknown epoch {rec['epoch']} "
                        f"where seq {want} belongs: record from another log (spliced)")
        later = self._find_seq(want, lines)
        if later is not None:
            raise _Fail(want, lineno, f"seq {want} is out of order: found seq {seq} in its place, "
                        f"seq {want} at line {later} (reordered)")
        missing = str(want) if seq == want + 1 else f"{want}..{seq - 1}"
        foreign = rec["epoch"] not in self.r.epochs and rec["prev"] != self.prev
        raise _Fail(want, lineno, f"seq {missing} missing before line {lineno} (deleted or truncated"
                    + (", or the records from here on come from another log)" if foreign else ")"))

    def _chain_break(self, rec: dict[str, Any], body: bytes, lineno: int, lines: _Lines) -> None:
        seq = rec["seq"]
        if seq == schema.FIRST_SEQ:
            raise _Fail(seq, lineno, "first record does not start a chain (prev is not the genesis value)")
        nxt = lines.peek()
        nrec = schema.parse_line(nxt[2]) if nxt is not None else None
        if nrec is not None and nrec.get("prev") != schema.line_hash(body):
            raise _Fail(seq, lineno, f"seq {seq} was modified: it neither chains to seq {seq - 1} "
                        f"nor is it chained by seq {seq + 1}")
        # Either seq-1 was edited, or a run of foreign records starts here.  A foreign
        # run (a new epoch, chaining among itself) ends with a second break where the
        # original log resumes; an edit leaves the rest of the chain intact.
        end = self._next_break(body, lines)
        if rec["epoch"] not in self.r.epochs and end is not None:
            raise _Fail(seq, lineno, f"seq {seq} starts an unknown epoch {rec['epoch']} that neither "
                        f"chains to seq {seq - 1} nor to line {end}: spliced from another log")
        raise _Fail(seq - 1, lineno - 1, f"seq {seq - 1} was modified: its hash does not match "
                    f"the prev of seq {seq}")

    def _next_break(self, body: bytes, lines: _Lines) -> int | None:
        """Line number of the next chain break after ``body`` (within the lookahead), or None."""
        h = schema.line_hash(body)
        for i in range(_DIAG_LOOKAHEAD):
            item = lines.peek(i)
            if item is None:
                return None
            r = schema.parse_line(item[2])
            if r is None or r.get("prev") != h:
                return item[0]
            h = schema.line_hash(item[2])
        return None

    def _find_seq(self, want: int, lines: _Lines) -> int | None:
        for i in range(_DIAG_LOOKAHEAD):
            item = lines.peek(i)
            if item is None:
                return None
            rec = schema.parse_line(item[2])
            if rec is not None and rec.get("seq") == want:
                return item[0]
        return None

    def _checkpoint(self, rec: dict[str, Any], lineno: int) -> None:
        seq, args = rec["seq"], rec["args"] or {}
        if args.get("head_seq") != seq - 1 or args.get("head_sha256") != rec["prev"]:
            raise _Fail(seq, lineno, "checkpoint does not name the record before it as its head")
        if self.key is not None:
            err = signing.signature_error(self.key, args)
            if err is not None:
                raise _Fail(seq, lineno, err)
            self.r.checkpoints_verified += 1
        self.r.checkpoints += 1
        self.r.last_checkpoint_seq = seq

    def check_detached(self) -> None:
        """Each detached entry must still be in the log, unchanged (catches truncation/rewrite)."""
        for e in self.detached:
            if e["seq"] < self.r.first_seq:
                self.before_file += 1  # covers a file this one replaced (rotation)
                continue
            if self.key is not None:
                err = signing.signature_error(self.key, e)
                if err is not None:
                    raise _Fail(e["seq"], 0, f"detached checkpoint for seq {e['seq']}: {err}")
            for s, want in ((e["head_seq"], e.get("head_sha256")), (e["seq"], e.get("line_sha256"))):
                got = self.seen.get(s)
                if got is None:
                    raise _Fail(self.r.last_seq + 1, 0,
                                f"log ends at seq {self.r.last_seq} but a checkpoint signed at "
                                f"{e.get('signed_at')} covers seq {e['seq']}: log truncated")
                if got[0] != want:
                    raise _Fail(s, 0, f"seq {s} differs from the checkpoint signed at "
                                f"{e.get('signed_at')}: log rewritten at or before seq {s}")
            cp = self.seen[e["seq"]][1]
            if cp["kind"] != "checkpoint" or (cp["args"] or {}).get("sig") != e.get("sig"):
                raise _Fail(e["seq"], 0, "detached checkpoint does not match the checkpoint record")


def verify(path: str, *, key: Ed25519PublicKey | None = None, checkpoints: str | None = None,
           require_checkpoint: bool = False, next_file_seq: int | None = None) -> VerifyResult:
    """Check the log at ``path``; see the module docstring for the rules.

    ``checkpoints`` is the detached checkpoint file (default ``path +
    ".checkpoints"`` if it exists; pass the off-host copy when you have one).
    ``require_checkpoint``: the result fails (exit 4) unless a signed
    checkpoint from that file, checked with ``key``, proves the log.
    ``next_file_seq``: the first seq of the file that replaced this one
    (rotation); detached entries from there on belong to that file.
    Raises OSError if a file cannot be read or is not a regular file,
    ValueError if the checkpoint file is malformed.
    """
    cp_path = checkpoints or signing.checkpoints_path(path)
    detached = signing.read_checkpoints(cp_path) if checkpoints or os.path.exists(cp_path) else []
    if next_file_seq is not None:
        detached = [e for e in detached if e["seq"] < next_file_seq]
    v = _Verifier(key, detached)
    with os.fdopen(files.open_read(path), "rb") as f:
        try:
            v.run(_Lines(f))
            v.check_detached()
        except _Fail as fail:
            v.r.ok = False
            v.r.first_bad_seq, v.r.first_bad_line, v.r.reason = fail.seq, fail.line or None, fail.reason
            if isinstance(fail, _Unsupported):
                v.r.unsupported = -1 if not isinstance(fail.version, int) else fail.version
    r = v.r
    if key is None and r.checkpoints:
        r.warnings.append(f"{r.checkpoints} checkpoint signature(s) not checked: no key given")
    if v.before_file:
        r.warnings.append(f"{v.before_file} detached checkpoint(s) cover seq before {r.first_seq}, "
                          "in the file this one replaced: verify that file too")
    if r.ok:
        proven = key is not None and len(detached) > v.before_file
        _unproven(r, proven)
        r.proof_required = require_checkpoint and not proven
    return r


def _unproven(r: VerifyResult, proven_by_checkpoint: bool) -> None:
    """Say plainly what a hash chain alone cannot show about this file."""
    if not proven_by_checkpoint:
        r.unproven.append(
            "no signed checkpoint was checked (give --key and an off-host copy of the checkpoint file): "
            "records cut from the end at a line boundary, an edited last record, or a chain recomputed "
            "from the first record would all look intact")
    elif r.last_checkpoint_seq is not None and r.last_seq > r.last_checkpoint_seq:
        r.unproven.append(
            f"records after seq {r.last_checkpoint_seq} (the last checkpoint) are protected by the hash chain only: "
            "a cut after it at a line boundary, or a rewrite after it, would look intact")
    if r.link is not None:
        r.unproven.append(
            f"this file continues the chain of a rotated file at seq {r.first_seq - 1} "
            f"(head {r.link.get('old_head_sha256')}); that file was not checked here")


def verify_files(paths: list[str], *, key: Ed25519PublicKey | None = None,
                 checkpoints: str | None = None, require_checkpoint: bool = False) -> list[VerifyResult]:
    """Verify rotated files in order (oldest first): each on its own, then the links between them.

    A later file must start with a ``link`` naming a record of the file before
    it (by seq and line hash).  Records of the old file after that record
    were appended by writers that had not yet noticed the rotation; they are
    reported, not failed.  A broken link fails the later file's result.
    """
    starts = [_first_seq(p) for p in paths[1:]] + [None]
    results = [verify(p, key=key, checkpoints=checkpoints, require_checkpoint=require_checkpoint,
                      next_file_seq=nxt) for p, nxt in zip(paths, starts, strict=True)]
    for i in range(1, len(paths)):
        r = results[i]
        if not r.ok:
            continue
        if r.link is None:
            r.ok, r.first_bad_seq, r.first_bad_line = False, schema.FIRST_SEQ, 1
            r.reason = f"{paths[i]} does not start with a link to {paths[i - 1]}"
            continue
        hs, hh = r.link["old_head_seq"], r.link["old_head_sha256"]
        got = _line_hash_at(paths[i - 1], hs)
        if got != hh:
            r.ok, r.first_bad_seq, r.first_bad_line = False, r.first_seq, 1
            r.reason = (f"link names seq {hs} of {paths[i - 1]} with hash {hh}, but that file "
                        + ("has no such record" if got is None else f"has {got} there")
                        + ": the files do not belong together or one was rewritten")
            continue
        r.unproven = [u for u in r.unproven if not u.startswith("this file continues")]
        r.warnings = [w for w in r.warnings if "in the file this one replaced" not in w]
        late = results[i - 1].last_seq - hs
        if late > 0:
            r.warnings.append(f"{late} record(s) after seq {hs} of {paths[i - 1]} were appended by writers "
                              "that had not yet noticed the rotation")
    return results


def _first_seq(path: str) -> int | None:
    """seq of the first record of ``path`` if it starts with a link (a rotated file's successor)."""
    with os.fdopen(files.open_read(path), "rb") as f:
        rec = schema.parse_line(f.readline(schema.MAX_LINE))
    if rec is None or rec.get("kind") != "link" or not isinstance(rec.get("seq"), int):
        return None
    return int(rec["seq"])


def _line_hash_at(path: str, seq: int) -> str | None:
    with os.fdopen(files.open_read(path), "rb") as f:
        for raw in f:
            rec = schema.parse_line(raw[:-1] if raw.endswith(b"\n") else raw)
            if rec is not None and rec.get("seq") == seq:
                return schema.line_hash(raw)
    return None
