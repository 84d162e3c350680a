"""AuditWriter: append hash-chained records, one global chain per file.

Several processes (named, dnssec-signzone, the checkpoint tool) may append to
the same file.  Each record is written under ``flock(LOCK_EX)`` on an
``O_APPEND`` descriptor; the writer caches (size, last seq, hash of last line)
from its own last write and, when ``fstat`` shows another size, re-reads the
file's tail to learn the current head.  So the chain and ``seq`` are global
and consecutive no matter how processes interleave, and the verifier needs no
per-process merge logic.

Durability: every record is one ``os.write`` of the whole line (no Python
buffering) before ``write`` returns; ``fsync="always"`` adds ``fdatasync``.
A torn last line (writer SIGKILLed mid-write, short write on a full disk that
could not be truncated back) is closed by the next writer with ``\\n`` and a
``kind="recovery"`` record chained to the torn bytes (see ``verify``).

Format (docs/audit-format.md): the first record of every epoch in a file
carries ``"format": FORMAT_VERSION`` as its first field (in the shim that is
the ``load`` record; after ``fork()`` the child's first record).  A file that
replaces a rotated one (logrotate's rename-and-create, or an unlink) opens
with a ``link`` record naming the old file's head; the writer compares the path's inode with
its descriptor's at most once per ``ROTATION_CHECK_S``.  No line is longer
than ``schema.MAX_LINE``, so the chain head is always in a bounded tail.

Files are opened through ``shim.audit.files``: no symlinks, regular files only.

Failure policy (``on_failure``): ``fail-closed`` raises ``AuditUnavailable``;
``fail-open`` counts the lost records and writes one ``kind="gap"`` record
with the count as soon as writing works again.  Either way the first failure
of an outage is reported once on stderr (and syslog).  A process blocked on
the lock (another writer stopped while holding it) blocks the caller: the
lock is held only for one write, so only a stopped process can cause this.

Cost (``python3 -m shim.audit.bench``, Python 3.11, ext4, one thread, typical
C_Sign args): 13-16 µs per record with fsync="none", of which ~4 µs is redact +
JSON encoding and ~3 µs the flock/fstat/write/flock syscalls; the rest is the
chaining (SHA-256, timestamp) and call overhead.  fsync="always" costs ~250 µs
on the same disk (~12 µs on tmpfs).  Another process's interleaved write adds
one small pread and json.loads of the last line.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

from shim.audit import files, schema
from shim.audit.redact import redact
from shim.audit.rfc5424 import SEV_ERR, SyslogSender
from shim.audit.schema import C_ENCODE as _c_encode
from shim.audit.schema import encode_value
from shim.constants import CKR, name_of

FSYNC_POLICIES: Final = ("none", "always")
FAILURE_POLICIES: Final = ("fail-closed", "fail-open")

_TAIL_CHUNK: Final = 4096  # most records are far shorter; grown on demand
#: How far back the writer looks for the chain head: a record is at most MAX_LINE,
#: so the last record line plus a torn fragment fit in a few of them.
TAIL_SCAN_LIMIT: Final = 4 * schema.MAX_LINE
#: Longest args encoding kept as is; longer ones are replaced by their length and SHA-256.
MAX_ARGS: Final = schema.MAX_LINE - 4096
ROTATION_CHECK_S: Final = 1.0
_MAX_PROG: Final = 255
_FORMAT_FIELD: Final = f'"format":{schema.FORMAT_VERSION},'
_getpid, _getuid, _monotonic, _time_ns, _sha256 = os.getpid, os.getuid, time.monotonic, time.time_ns, hashlib.sha256


class AuditUnavailable(Exception):
    """The record could not be written and the policy is fail-closed.

    The dispatcher refuses the PKCS#11 call (maps this to a CKR) instead of
    performing an unaudited operation.
    """


#: ``make_args(seq, prev)``: args that must name the record's own chain position.
ArgsFactory = Callable[[int, str], dict[str, Any]]


def _program_name() -> str:
    try:
        with open("/proc/self/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "?"


class _Tail:
    """What the file ends with: last record's seq and line hash, and a torn region if any."""

    __slots__ = ("seq", "head", "recovery", "needs_newline")

    def __init__(self, seq: int, head: str, recovery: dict[str, Any] | None, needs_newline: bool) -> None:
        self.seq = seq
        self.head = head
        self.recovery = recovery
        self.needs_newline = needs_newline


def _is_record_line(line: bytes) -> bool:
    rec = schema.parse_line(line)
    return (rec is not None and isinstance(rec.get("seq"), int)
            and isinstance(rec.get("prev"), str) and len(rec["prev"]) == 64)


def read_tail(fd: int, size: int) -> _Tail:
    """Find the last complete record line before ``size``; bytes after it are a torn region.

    Reads backwards in growing chunks, so a long log costs one small pread,
    and never more than TAIL_SCAN_LIMIT bytes: if no record line ends within
    them, raises OSError rather than reading a huge last line into memory.
    """
    if size == 0:
        return _Tail(schema.FIRST_SEQ - 1, schema.GENESIS, None, False)
    chunk = _TAIL_CHUNK
    while True:
        start = max(0, size - chunk)
        buf = os.pread(fd, size - start, start)
        end = len(buf) if buf.endswith(b"\n") else buf.rfind(b"\n") + 1  # end of complete lines
        found: tuple[int, int] | None = None  # (line start, line end) within buf
        le = end - 1
        while le >= 0:
            ls = buf.rfind(b"\n", 0, le) + 1
            if ls == 0 and start > 0:
                break  # line may begin before this chunk
            if _is_record_line(buf[ls:le]):
                found = (ls, le)
                break
            le = ls - 1
        if found is not None or start == 0:
            break
        if chunk >= TAIL_SCAN_LIMIT:
            raise OSError(errno.EBADMSG, f"no audit record in the last {TAIL_SCAN_LIMIT} bytes of the log: "
                          "cannot find the chain head (move the file aside; verify it with 'audit verify')")
        chunk = min(chunk * 16, TAIL_SCAN_LIMIT)
    if found is None:
        seq, head, region_start = schema.FIRST_SEQ - 1, schema.GENESIS, 0
    else:
        line = buf[found[0]:found[1]]
        rec = schema.parse_line(line)
        assert rec is not None
        seq, head, region_start = rec["seq"], schema.line_hash(line), start + found[1] + 1
    if region_start >= size:
        return _Tail(seq, head, None, False)
    needs_newline = not buf.endswith(b"\n")
    region = buf[region_start - start: len(buf) - (0 if needs_newline else 1)]
    recovery = {"torn_offset": region_start, "torn_len": len(region),
                "torn_sha256": schema.line_hash(region), "after_sha256": head}
    return _Tail(seq, head, recovery, needs_newline)


_WRITERS: weakref.WeakSet[AuditWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for w in list(_WRITERS):
        w._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# (fd, expected size, line, fsync) -> new size, or -2 if the file is not at the expected size;
# raises OSError.
LockedAppend = Callable[[int, int, bytes, bool], int]


class AuditWriter:
    """Appends records to ``path``; thread-safe, fork-safe, multi-process-safe."""

    def __init__(self, path: str, *, fsync: str = "none", on_failure: str = "fail-closed",
                 syslog: bool = False, program: str | None = None,
                 syslog_path: str = "/dev/log", locked_append: LockedAppend | None = None) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        if on_failure not in FAILURE_POLICIES:
            raise ValueError(f"on_failure must be one of {FAILURE_POLICIES}, not {on_failure!r}")
        self.path = os.fspath(path)
        self.fsync = fsync
        self.fail_open = on_failure == "fail-open"
        self._program = program
        self._syslog_path = syslog_path if syslog else None
        self._closed = False
        self.lost = 0  # fail-open: records lost in the current outage
        self._lost_first_ts: str | None = None
        self._lost_error = ""
        self._reported = False
        # Inside the shim: the locked section (flock, size check, write, unlock) as one C call
        # without the GIL (sc4_audit_append in the core); None = the Python path only.
        self._locked_append = locked_append
        self._init_process()
        _WRITERS.add(self)

    def _init_process(self) -> None:
        """Per-process state: a fresh epoch, lock and descriptor (at start and after fork)."""
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ident: tuple[int, int] = (-1, -1)  # (st_dev, st_ino) of _fd
        self._next_check = 0.0  # monotonic time of the next rotation check
        self._link: dict[str, Any] | None = None  # old file's head, after a rotation
        self._size = -1  # file size after our last write; -1 = unknown, re-read the tail
        self._seq = 0
        self._head = schema.GENESIS
        self._ts = schema._TsCache()
        self._tls = threading.local()  # per-thread native id: gettid once per thread, not per record
        self._fixed: dict[tuple[str | None, str | int | None, str | None], tuple[str, str, str]] = {}
        self.pid = os.getpid()
        self.prog = (self._program or _program_name())[:_MAX_PROG]  # keeps every line within MAX_LINE
        self._syslog = (SyslogSender(self._syslog_path, app=self.prog)
                        if self._syslog_path is not None else None)
        self._new_epoch()

    def _new_epoch(self) -> None:
        """A new epoch (per process, and per file after a rotation); its first line carries the format."""
        self.epoch = secrets.token_hex(8)
        self._opened = False  # no record of this epoch written to the current file yet
        # pid/uid/prog/epoch are constant per epoch: encode them once, not per record.
        self._uid = os.getuid()
        self._prefix = schema.ENCODER.encode(
            {"epoch": self.epoch, "pid": self.pid, "uid": self._uid, "prog": self.prog})[1:-1]

    def after_fork(self) -> None:
        """In a forked child: a private descriptor and a new epoch (also done lazily
        on the next write, since a C host's fork() runs no Python at-fork hooks)."""
        if os.getpid() != self.pid:
            self._reset_after_fork()

    def _reset_after_fork(self) -> None:
        # The child shares the parent's open file description, and flock() locks
        # belong to it: without a private descriptor parent and child would not
        # exclude each other.  Close only the child's copy (that does not release
        # the parent's lock), forget the cached head, start a new epoch.
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        if self._syslog is not None:
            self._syslog.close()
        self.lost = 0  # the parent reports its own gap
        self._lost_first_ts = None
        self._reported = False
        self._init_process()

    # -- public API ---------------------------------------------------------------

    def write(self, kind: str, *, fn: str | None = None, args: dict[str, Any] | None = None,
              rv: str | int | None = None, dur_us: int | None = None, src: str | None = None,
              error: str | None = None) -> None:
        """Append one record; returns once it is in the file (and fsynced if configured).

        ``args`` is a summary built by the caller; secret-named keys are redacted
        anyway (``shim.audit.redact``).  ``rv`` may be a CK_RV number, printed by
        its CKR name.  A ``load`` record's args get ``format`` first.  Raises
        ``AuditUnavailable`` on failure if fail-closed.
        """
        self._append(self._body(kind, fn, args, rv, dur_us, src, error))

    def write_call(self, fn: str, args: dict[str, Any], rv: str, dur_us: int, src: str | None) -> None:
        """``write("call", fn=fn, args=args, rv=rv, dur_us=dur_us, src=src)``, the same bytes:
        the record of every PKCS#11 call without an error (the dispatcher's hot path).

        While this process wrote the file's last record (the C append checks that under the
        file lock), the line is assembled and appended in this one frame; anything else (first
        record, another process appended, rotation check due, fork, uid change, an outage) takes
        the general path.  tests/unit/test_hot_path_calls.py counts its Python calls.
        """
        fixed = self._fixed.get((fn, rv, src))
        if fixed is None:
            fixed = self._fixed_pieces(fn, rv, src)
        try:
            tid = self._tls.tid
        except AttributeError:
            tid = self._tls.tid = threading.get_native_id()
        try:
            enc_args = "".join(_c_encode(redact(args), 0)) if _c_encode is not None else encode_value(redact(args))
        except Exception:  # noqa: BLE001 - the general encoding says what was wrong
            enc_args = _encode_args(args)
        if len(enc_args) > MAX_ARGS:
            enc_args = schema.ENCODER.encode(_oversize(enc_args))
        body = f'"thread":{tid},{fixed[0]}{enc_args}{fixed[1]}{dur_us}{fixed[2]}'
        append = self._locked_append
        if append is not None and _getpid() == self.pid:
            with self._lock:
                if (self._size >= 0 and self._fd is not None and not self.lost and not self._closed
                        and _monotonic() < self._next_check and _getuid() == self._uid):
                    seq = self._seq + 1
                    ns = _time_ns()
                    tsc = self._ts
                    if ns // 1_000_000_000 == tsc.sec:
                        ts = f"{tsc.text}.{ns // 1000 % 1_000_000:06d}Z"
                    else:
                        ts = tsc.now()
                    line = f'{{"seq":{seq},"ts":"{ts}",{self._prefix},{body},"prev":"{self._head}"}}\n'.encode("ascii")
                    try:
                        size = append(self._fd, self._size, line, self.fsync == "always")
                    except OSError as e:
                        self._size = -1
                        self._failed(e)
                        return
                    if size >= 0:
                        self._size, self._seq, self._head = size, seq, _sha256(line[:-1]).hexdigest()
                        self._reported = False
                        if self._syslog is not None:
                            self._syslog.send(ts, self.pid, "call", line[:-1])
                        return
        self._append(f"{self._prefix},{body}")

    def write_bound(self, kind: str, make_args: ArgsFactory, *,
                    fn: str | None = None) -> tuple[int, str] | None:
        """Append a record whose args are computed under the lock from its (seq, prev).

        For checkpoints, which must sign the exact chain head they follow.
        Returns (seq, hash of the written line), or None if lost (fail-open).
        """
        def build(seq: int, prev: str) -> str:
            return self._body(kind, fn, make_args(seq, prev), None, None, None, None)
        return self._append(build)

    def close(self) -> None:
        """Close the descriptor; later writes raise ValueError."""
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._syslog is not None:
                self._syslog.close()

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------

    def _body(self, kind: str, fn: str | None, args: dict[str, Any] | None, rv: str | int | None,
              dur_us: int | None, src: str | None, error: str | None) -> str:
        """Everything after ``ts`` up to ``prev``, encoded outside the lock."""
        if kind == "call" and error is None and type(dur_us) is int:
            # The dispatcher's hot path (every PKCS#11 call): the constant pieces are
            # encoded once per (fn, rv, src) and only ``args`` goes through the encoder.
            # Must stay byte-identical to the general path below (schema.encode_line).
            fixed = self._fixed.get((fn, rv, src))
            if fixed is None:
                fixed = self._fixed_pieces(fn, rv, src)
            try:
                tid = self._tls.tid
            except AttributeError:
                tid = self._tls.tid = threading.get_native_id()
            enc_args = "null" if args is None else _encode_args(args)
            return f'{self._prefix},"thread":{tid},{fixed[0]}{enc_args}{fixed[1]}{dur_us}{fixed[2]}'
        if kind not in schema.KINDS:
            raise ValueError(f"unknown audit record kind {kind!r}")
        if src is not None and src not in schema.SRCS:
            raise ValueError(f"unknown src {src!r}")
        if isinstance(rv, int):
            rv = name_of(CKR, rv)
        body: dict[str, Any] = {"thread": threading.get_native_id(), "kind": kind, "fn": fn,
                                "args": None if args is None else redact(args), "rv": rv,
                                "dur_us": dur_us, "src": src}
        if error is not None:
            body["error"] = error if len(error) <= MAX_ARGS // 4 else error[: MAX_ARGS // 4] + "..."
        try:
            enc = schema.ENCODER.encode(body)
        except (TypeError, ValueError) as e:  # non-str keys, cycles: keep the record, lose the args
            body["args"] = {"unserialisable": type(e).__name__}
            enc = schema.ENCODER.encode(body)
        if len(enc) > MAX_ARGS:
            body["args"] = _oversize(schema.ENCODER.encode(body["args"]))
            enc = schema.ENCODER.encode(body)
        return f"{self._prefix},{enc[1:-1]}"

    def _fixed_pieces(self, fn: str | None, rv: str | int | None, src: str | None) -> tuple[str, str, str]:
        if src is not None and src not in schema.SRCS:
            raise ValueError(f"unknown src {src!r}")
        rv_text = name_of(CKR, rv) if isinstance(rv, int) else rv
        enc = schema.ENCODER.encode
        pieces = (f'"kind":"call","fn":{enc(fn)},"args":', f',"rv":{enc(rv_text)},"dur_us":', f',"src":{enc(src)}')
        if len(self._fixed) < 4096:  # a few dozen (fn, rv, src) in practice; bounded anyway
            self._fixed[(fn, rv, src)] = pieces
        return pieces

    def _line(self, seq: int, prev: str, body: str, first: bool = False) -> tuple[str, bytes]:
        ts = self._ts.now()
        fmt = _FORMAT_FIELD if first else ""
        return ts, f'{{{fmt}"seq":{seq},"ts":"{ts}",{body},"prev":"{prev}"}}\n'.encode("ascii")

    def _append(self, body: str | Callable[[int, str], str]) -> tuple[int, str] | None:
        if os.getpid() != self.pid:  # forked by C code (no Python at-fork hooks ran)
            self._reset_after_fork()
        with self._lock:
            if self._closed:
                raise ValueError("AuditWriter is closed")
            if self._fd is not None:
                now = time.monotonic()
                if now >= self._next_check:
                    self._next_check = now + ROTATION_CHECK_S
                    self._check_rotation()
            if os.getuid() != self._uid:
                # A daemon (named) loads the module as root and drops to its own user later: an
                # epoch is one (pid, uid, prog), so the first record under the new uid opens a new one.
                self._new_epoch()
                self._size = -1  # the slow path writes the new epoch's first line (with its format)
            if isinstance(body, str) and not body.startswith(self._prefix):
                # Encoded before a rotation or fork gave this writer a new epoch: the record
                # belongs to the new one.  An encoded prog cannot contain ',"thread":'.
                body = self._prefix + body[body.index(',"thread":'):]
            if (self._locked_append is not None and self._size >= 0 and self._fd is not None
                    and not self.lost and isinstance(body, str)):
                # Nobody else appended since our last record (checked under the file lock in C):
                # the cached seq/head are the chain head, so the line can be built up front.
                seq = self._seq + 1
                ts, line = self._line(seq, self._head, body)
                try:
                    size = self._locked_append(self._fd, self._size, line, self.fsync == "always")
                except OSError as e:
                    self._size = -1
                    self._failed(e)
                    return None
                if size >= 0:
                    self._size, self._seq, self._head = size, seq, schema.line_hash(line)
                    self._reported = False
                    if self._syslog is not None:
                        self._syslog.send(ts, self.pid, _kind_of(line), line[:-1])
                    return seq, self._head
                # another process appended: the Python path re-reads the tail
            try:
                result = self._write_locked(body)
            except OSError as e:
                self._failed(e)
                return None
            self._reported = False
            return result

    def _check_rotation(self) -> None:
        """If the path no longer names our file (rotated, removed), continue in the new one.

        The old file's head is read under its lock, so the new file's ``link``
        record names what the old file ended with; the writer starts a new
        epoch, whose first record in the new file carries the format version.
        """
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return  # cannot tell; keep appending where we are
        old, ident = self._fd, self._ident
        assert old is not None
        link: dict[str, Any] | None = None
        try:
            fcntl.flock(old, fcntl.LOCK_EX)
            try:
                size = os.lseek(old, 0, os.SEEK_END)
                tail = read_tail(old, size)
                if tail.seq >= schema.FIRST_SEQ:
                    link = {"old_head_seq": tail.seq, "old_head_sha256": tail.head, "old_size": size,
                            "old_ino": ident[1]}
            finally:
                fcntl.flock(old, fcntl.LOCK_UN)
        except OSError:
            if self._seq >= schema.FIRST_SEQ:  # our own last record: still a record of the old file
                link = {"old_head_seq": self._seq, "old_head_sha256": self._head, "old_size": self._size,
                        "old_ino": ident[1]}
        try:
            os.close(old)
        except OSError:
            pass
        self._fd, self._size, self._link = None, -1, link
        self._new_epoch()

    def _open(self) -> int:
        fd, st = files.open_append(self.path)
        self._fd, self._size, self._ident = fd, -1, (st.st_dev, st.st_ino)
        self._next_check = time.monotonic() + ROTATION_CHECK_S
        return fd

    def _write_locked(self, body: str | Callable[[int, str], str]) -> tuple[int, str]:
        fd = self._fd if self._fd is not None else self._open()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)  # the size; 0.4 us, fstat() builds a stat_result (1.5 us)
            seq, head = self._seq, self._head
            lines: list[bytes] = []
            shipped: list[tuple[str, str, bytes]] = []  # (ts, kind, line) for syslog
            first = not self._opened  # the epoch's first line carries the format version
            if size == 0 and self._link is not None and first:
                # The first record of a file that replaces a rotated one: continue its chain.
                seq, head = self._link["old_head_seq"] + 1, self._link["old_head_sha256"]
                ts, line = self._line(seq, head, self._body("link", None, self._link, None, None, None, None), True)
                lines.append(line)
                shipped.append((ts, "link", line))
                head, first = schema.line_hash(line), False
            elif size != self._size:  # another process appended (or first write / after an error)
                tail = read_tail(fd, size)
                seq, head = tail.seq, tail.head
                if tail.recovery is not None:
                    if tail.needs_newline:
                        lines.append(b"\n")
                    seq += 1
                    ts, line = self._line(seq, tail.recovery["torn_sha256"],
                                          self._body("recovery", None, tail.recovery, None, None, None, None),
                                          first)
                    first = False
                    lines.append(line)
                    shipped.append((ts, "recovery", line))
                    head = schema.line_hash(line)
            if self.lost:
                seq += 1
                gap = {"lost": self.lost, "first_lost_ts": self._lost_first_ts, "error": self._lost_error}
                ts, line = self._line(seq, head, self._body("gap", None, gap, None, None, None, None), first)
                first = False
                lines.append(line)
                shipped.append((ts, "gap", line))
                head = schema.line_hash(line)
            seq += 1
            ts, line = self._line(seq, head, body if isinstance(body, str) else body(seq, head), first)
            lines.append(line)
            data = b"".join(lines) if len(lines) > 1 else line
            self._write_all(fd, data, size)
            if self.fsync == "always":
                try:
                    os.fdatasync(fd)
                except OSError:
                    self._size = -1
                    raise
            self._size, self._seq, self._head = size + len(data), seq, schema.line_hash(line)
            self.lost, self._lost_first_ts = 0, None
            self._opened, self._link = True, None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if self._syslog is not None:
            # Still under the writer's thread lock, so syslog sees the file's order.
            shipped.append((ts, _kind_of(line), line))
            for ts, kind, ln in shipped:
                self._syslog.send(ts, self.pid, kind, ln[:-1])
        return seq, self._head

    def _write_all(self, fd: int, data: bytes, size_before: int) -> None:
        done = 0
        try:
            while done < len(data):
                n = os.write(fd, data[done:] if done else data)
                if n <= 0:
                    raise OSError(5, "short write")
                done += n
        except OSError:
            self._size = -1  # whatever happened, re-read the tail next time
            if done:
                # We hold the lock and know the size before our write: cut our own
                # partial line so the file never keeps a torn record of ours.  If
                # that fails too, the next writer's recovery record covers it.
                try:
                    os.ftruncate(fd, size_before)
                except OSError:
                    pass
            raise

    def _failed(self, e: OSError) -> None:
        msg = f"sc4dnssec: audit log {self.path}: cannot write: {e.strerror or e}"
        if not self._reported:
            self._reported = True
            print(msg, file=sys.stderr, flush=True)
            if self._syslog is not None:
                self._syslog.send(self._ts.now(), self.pid, "audit-failure", msg.encode(), SEV_ERR)
        if not self.fail_open:
            raise AuditUnavailable(msg) from e
        if self.lost == 0:
            self._lost_first_ts, self._lost_error = self._ts.now(), msg
        self.lost += 1


def _kind_of(line: bytes) -> str:
    i = line.find(b'"kind":"')
    return line[i + 8: line.index(b'"', i + 8)].decode() if i >= 0 else "-"


def _encode_args(args: Any) -> str:
    """A call record's ``args`` as encoded: redacted, compact, bounded (see ``_oversize``)."""
    try:
        enc = schema.ENCODER.encode(redact(args))
    except (TypeError, ValueError) as e:
        enc = schema.ENCODER.encode({"unserialisable": type(e).__name__})
    if len(enc) > MAX_ARGS:
        enc = schema.ENCODER.encode(_oversize(enc))
    return enc


def _oversize(encoded: str) -> dict[str, Any]:
    """What stands in for args too long for one line: their length and SHA-256."""
    return {"oversize": {"len": len(encoded), "sha256": hashlib.sha256(encoded.encode("ascii")).hexdigest()}}
