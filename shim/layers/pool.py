"""The card pool: several cards holding the same keys, presented as one slot with one token.

Sits between completion and base: completion sees one card (its learnt capabilities, sessions and
derived public keys are about that one token), and the pool routes each card call to a member.
Each member is a token of a backend module, found by serial or label (``[pool]``, see
:class:`shim.config.PoolConfig`).  With ``separate_modules`` (the default) every member gets its
own instance of its module: OpenSC serialises every call of one instance on a global lock, so
members of one instance could neither sign in parallel nor survive one hung card.

What the pool guarantees (docs/pool.md):

- Keys are matched by (class, CKA_ID) and by public key: a CKA_ID whose public keys differ between
  members refuses C_Initialize; a key on some members only is served by those and reported.
- The consumer's object handles are the pool's own and valid on whichever member does the work.
- C_Login logs in on every member.  Each signing operation runs on the least busy member holding
  the key; a member answering DEVICE_REMOVED, DEVICE_ERROR, TOKEN_NOT_PRESENT, GENERAL_ERROR, or
  not within ``timeout_ms``, is set aside and the operation is retried on another member.
- A pool never signs in software: every signature comes from a card, and is verified against the
  key's public key before it is handed out; a bad one is an error record and a failover.

A member call that may hang runs in that member's worker thread on buffers the pool owns, so an
abandoned call writes into nothing the consumer still holds.  The member is set aside until the
call answers; its session is then closed (its operation state is unknown).
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shim import cabi
from shim.attributes import ulong
from shim.call import INTERNAL, Call, LayerFn, Table, recorded
from shim.config import PoolConfig, PoolMember
from shim.constants import CKA, CKO, CKR, CKS, CKU, InitFlag, SessionFlag, SlotFlag, name_of
from shim.errors import PKCS11Error
from shim.layers.base import Base
from shim.marshal import fill_text, read_bytes, read_mechanism, read_template, write_output
from shim.soft.card import find, read_attributes
from shim.soft.pubkeys import _from_certificate, _from_private
from shim.soft.verify import Verifier, public_key

POOL_SLOT = 0
#: Answers after which the operation goes to another member (the member is set aside).
FAILOVER = frozenset({CKR.DEVICE_REMOVED, CKR.DEVICE_ERROR, CKR.TOKEN_NOT_PRESENT, CKR.GENERAL_ERROR,
                      CKR.SESSION_HANDLE_INVALID, CKR.DEVICE_MEMORY})
#: How often a member that left is asked whether its card is back.
REJOIN_INTERVAL_S = 1.0
_SIG_MAX = 8192  # a pool-owned signature buffer: RSA-16384 fits
_MAX_PARTS = 1 << 26  # multi-part data the pool keeps for a retry on another member
_PUB_ATTRS = (CKA.KEY_TYPE, CKA.EC_PARAMS, CKA.EC_POINT, CKA.MODULUS, CKA.PUBLIC_EXPONENT)
_OBJ_ATTRS = (CKA.CLASS, CKA.ID, CKA.LABEL, *_PUB_ATTRS, CKA.VALUE)


class PoolError(Exception):
    """The pool cannot start: the message says which members and keys."""


class Worker:
    """A member's threads.  Daemon threads, unlike ThreadPoolExecutor's: a call abandoned on a
    hung card must not hold up the host's exit, which joins every executor thread."""

    def __init__(self, name: str, size: int = 8) -> None:
        self.name = name
        self.size = size
        self._q: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._idle <= 0 and len(self._threads) < self.size:
                t = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                self._idle += 1
                t.start()
            self._idle -= 1
        self._q.put((fut, fn))
        return fut

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            fut, fn = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                    fut.set_exception(e)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = False) -> None:
        for _ in self._threads:
            self._q.put(None)


@dataclass
class Member:
    conf: PoolMember
    table: Table
    identity: dict[str, Any]
    state: str = "absent"  # "up" | "absent" (not found / pulled) | "hung" (a call did not answer)
    slot: int | None = None
    service: int | None = None  # the pool's own session on the member (matching, login)
    handles: dict[int, int] = field(default_factory=dict)  # pool handle -> member handle
    reverse: dict[int, int] = field(default_factory=dict)  # member handle -> pool handle
    busy: int = 0
    next_probe: float = 0.0
    executor: Worker | None = None
    service_lock: threading.RLock = field(default_factory=threading.RLock)  # one user of the service session

    @property
    def name(self) -> str:
        return self.conf.name

    def fn(self, name: str, *args: Any) -> int:
        return int(self.table[name](INTERNAL, *args))


@dataclass
class SignOp:
    mechanism: int
    parameter: bytes
    key: int
    member: Member | None
    parts: bytearray = field(default_factory=bytearray)
    multipart: bool = False
    active_on: int | None = None  # the member session whose SignInit has not been ended by a C_Sign
    session: int | None = None  # the member session of the SignInit
    cached: tuple[bytes, bytes, str] | None = None  # (data, signature, member) kept after a length query


@dataclass
class PoolSession:
    flags: int
    members: dict[str, int] = field(default_factory=dict)  # member name -> member session
    sign: SignOp | None = None
    found: list[int] | None = None


class Pool:
    """The layer; :meth:`table` serves :data:`OVERRIDES`, everything else is unsupported."""

    def __init__(self, below: Table, config: PoolConfig, *, default_module: Callable[[], str | None],
                 record: Callable[..., None]) -> None:
        self.below = below
        self.config = config
        self._default_module = default_module
        self._record = record
        self.lock = threading.RLock()
        self.members: list[Member] = []
        self.sessions: dict[int, PoolSession] = {}
        self._next_session = 1
        self.objects: dict[tuple[int, bytes, bytes], int] = {}  # (class, id, label-if-no-id) -> pool handle
        self.pubkeys: dict[bytes, tuple[str, dict[int, bytes]]] = {}  # CKA_ID -> (SPKI sha256, attributes)
        self._pub_from: dict[bytes, str] = {}  # CKA_ID -> the member whose public key it is
        self.user: int | None = None
        self._consumer_pin: bytes | None = None
        self._bases: list[Base] = []
        self._modules: list[Table] = []  # the member modules the pool initialised itself
        self._copies: str | None = None
        self._turn = 0
        self._login_lock = threading.Lock()

    # -- wiring ------------------------------------------------------------------------
    def table(self) -> Table:
        own: dict[str, LayerFn] = {
            "C_Initialize": self.initialize, "C_Finalize": self.finalize, "C_GetInfo": self.get_info,
            "C_GetSlotList": self.get_slot_list, "C_GetSlotInfo": self.get_slot_info,
            "C_GetTokenInfo": self.get_token_info, "C_GetMechanismList": self.get_mechanism_list,
            "C_GetMechanismInfo": self.get_mechanism_info, "C_OpenSession": self.open_session,
            "C_CloseSession": self.close_session, "C_CloseAllSessions": self.close_all_sessions,
            "C_GetSessionInfo": self.get_session_info, "C_Login": self.login, "C_Logout": self.logout,
            "C_FindObjectsInit": self.find_objects_init, "C_FindObjects": self.find_objects,
            "C_FindObjectsFinal": self.find_objects_final, "C_GetAttributeValue": self.get_attribute_value,
            "C_GetObjectSize": self.get_object_size, "C_SignInit": self.sign_init, "C_Sign": self.sign,
            "C_SignUpdate": self.sign_update, "C_SignFinal": self.sign_final,
        }
        return {name: own.get(name, _unsupported) for name in self.below}

    def event(self, event: str, member: Member | None, **details: Any) -> None:
        """A pool event (join, leave, timeout, answered, refused, partial key) as a ``backend`` record."""
        args: dict[str, Any] = {"pool": event}
        if member is not None:
            args["member"] = member.name
        args.update(details)
        self._record("backend", args=args)

    # -- start and stop -----------------------------------------------------------------
    def initialize(self, call: Call, p_init_args: Any) -> int:
        call = recorded(call)
        rv = self.below["C_Initialize"](call, p_init_args) if self._uses_below() else CKR.OK
        if rv not in (CKR.OK, CKR.CRYPTOKI_ALREADY_INITIALIZED):
            return int(rv)
        try:
            self._load_members(call)
            for m in self.members:
                self._join(m, starting=True)
            self._check_keys()
        except PoolError as e:
            self._stop_members()
            raise PKCS11Error(CKR.GENERAL_ERROR, f"pool refused to start: {e}") from None
        call.args["pool"] = {m.name: m.state for m in self.members}
        return CKR.OK

    def _uses_below(self) -> bool:
        """Does a member use the module below (the top-level backend, not a private copy)?"""
        default = self._default_module()
        return not self.config.separate_modules and any((c.module or default) == default
                                                         for c in self.config.members)

    def _load_members(self, call: Call) -> None:
        self.members = []
        default = self._default_module()
        shared: dict[str, Table] = {}
        identity: dict[str, Any]
        for conf in self.config.members:
            path = conf.module or default
            if not path:
                raise PoolError(f"member {conf.name}: no module (set backend or the member's module)")
            if not self.config.separate_modules and path == default:
                table, identity = self.below, {"path": path, "shared": True}
            elif not self.config.separate_modules and path in shared:
                table, identity = shared[path], {"path": path, "shared": True}
            else:
                load_path = self._private_copy(path) if self.config.separate_modules else path
                table, deepbind = self._load_module(conf.name, path, load_path)
                shared[path] = table
                identity = {"path": path, "deepbind": deepbind}
            m = Member(conf, table, identity,
                       executor=Worker(f"sc4pool-{conf.name}"))
            self.members.append(m)
        if self._copies:
            shutil.rmtree(self._copies, ignore_errors=True)
            self._copies = None

    def _load_module(self, name: str, path: str, load_path: str) -> tuple[Table, bool]:
        base = Base()
        backend = base.load(load_path, frozenset())
        self._bases.append(base)
        table = base.table()
        self._modules.append(table)
        args = cabi.ffi.new("CK_C_INITIALIZE_ARGS *")
        args.flags = InitFlag.OS_LOCKING_OK
        rv = table["C_Initialize"](INTERNAL, args)
        if rv not in (CKR.OK, CKR.CRYPTOKI_ALREADY_INITIALIZED):
            raise PoolError(f"member {name}: C_Initialize of {path} answered {_rv(rv)}")
        return table, backend.deepbind

    def _private_copy(self, path: str) -> str:
        """A copy of the module in a directory only this process's user can write: loading the same
        path twice would return the same instance.  Removed once loaded (the mapping stays)."""
        if self._copies is None:
            self._copies = tempfile.mkdtemp(prefix="sc4dnssec-pool-")
        dest = os.path.join(self._copies, f"{len(self._bases)}-{os.path.basename(path)}")
        shutil.copyfile(path, dest)
        return dest

    def finalize(self, call: Call, p_reserved: Any) -> int:
        self._stop_members()
        self.sessions.clear()
        self.user = None
        self._consumer_pin = None
        if self._uses_below():
            return int(self.below["C_Finalize"](call, p_reserved))
        return CKR.OK

    def _stop_members(self) -> None:
        hung = [m.table for m in self.members if m.state == "hung"]
        for m in self.members:
            if m.executor is not None:
                m.executor.shutdown(wait=False)
        for table in self._modules:
            if not any(t is table for t in hung):
                # A hung member's module still runs the abandoned call: it is left loaded and initialised.
                table["C_Finalize"](INTERNAL, cabi.NULL)
        self._modules = []
        self.members = []
        self.objects.clear()
        self.pubkeys.clear()
        self._pub_from.clear()
        self._bases = []

    def reset(self) -> None:
        """After fork: the parent's members, sessions and threads are not this process's."""
        self.members = []
        self.sessions.clear()
        self.objects.clear()
        self.pubkeys.clear()
        self._pub_from.clear()
        self.user = None
        self._consumer_pin = None

    # -- membership -----------------------------------------------------------------------
    def _join(self, m: Member, *, starting: bool = False) -> bool:
        """Find the member's token, open its service session, log in, match its keys.  At start a
        key conflict stops the pool; later it keeps the member out."""
        if m.service is not None:
            m.fn("C_CloseSession", m.service)
            m.service = None
        slot = self._find_slot(m)
        if slot is None:
            if m.state == "up":
                self._leave(m, "token not found")
            m.state = "absent"
            m.next_probe = time.monotonic() + REJOIN_INTERVAL_S
            return False
        h = cabi.ffi.new("CK_SESSION_HANDLE *")
        rv = m.fn("C_OpenSession", slot, SessionFlag.SERIAL_SESSION, cabi.NULL, cabi.NULL, h)
        if rv != CKR.OK:
            m.state = "absent"
            m.next_probe = time.monotonic() + REJOIN_INTERVAL_S
            return False
        m.slot, m.service = slot, int(h[0])
        if self.user is not None:
            lrv = self._login_member(m, self.user, None)
            if lrv not in (CKR.OK, CKR.USER_ALREADY_LOGGED_IN):
                self.event("refused", m, why=f"C_Login answered {_rv(lrv)}")
                m.fn("C_CloseSession", m.service)
                m.state, m.service = "absent", None
                m.next_probe = time.monotonic() + 30 * REJOIN_INTERVAL_S
                return False
        try:
            self._match(m)
        except PoolError as e:
            if not starting:
                self.event("refused", m, why=str(e))
                m.fn("C_CloseSession", m.service)
                m.state, m.service = "absent", None
                m.next_probe = time.monotonic() + 30 * REJOIN_INTERVAL_S
                return False
            raise
        with self.lock:
            for s in self.sessions.values():
                s.members.pop(m.name, None)
            m.state = "up"
        self.event("join", m, slot=slot, objects=len(m.handles), **m.identity)
        return True

    def _find_slot(self, m: Member) -> int | None:
        count = cabi.ffi.new("CK_ULONG *")
        if m.fn("C_GetSlotList", 1, cabi.NULL, count) != CKR.OK or count[0] == 0:
            return None
        slots = cabi.ffi.new("CK_SLOT_ID[]", int(count[0]))
        if m.fn("C_GetSlotList", 1, slots, count) != CKR.OK:
            return None
        info = cabi.ffi.new("CK_TOKEN_INFO *")
        for i in range(int(count[0])):
            if m.fn("C_GetTokenInfo", slots[i], info) != CKR.OK:
                continue
            serial = bytes(info.serialNumber).decode(errors="replace").strip()
            label = bytes(info.label).decode(errors="replace").strip()
            if (m.conf.serial is not None and serial == m.conf.serial) or \
                    (m.conf.label is not None and label == m.conf.label):
                return int(slots[i])
        return None

    def _leave(self, m: Member, why: str) -> None:
        with self.lock:
            if m.state != "up":
                return
            m.state = "absent"
            m.next_probe = time.monotonic() + REJOIN_INTERVAL_S
            for s in self.sessions.values():
                s.members.pop(m.name, None)
        self.event("leave", m, why=why)

    def _probe_absent(self) -> None:
        """Ask members that left whether their card is back, in their own worker (never waited for)."""
        now = time.monotonic()
        for m in self.members:
            if m.state == "absent" and m.next_probe <= now and m.executor is not None:
                m.next_probe = now + 60.0  # until this probe ends
                fut = m.executor.submit(partial(self._rejoin, m))
                fut.add_done_callback(lambda f: f.exception())

    def _rejoin(self, m: Member) -> None:
        try:
            if not self._join(m):
                return
            self._check_keys()
        except Exception as e:  # noqa: BLE001 - a probe must never reach the consumer
            m.state = "absent"
            m.next_probe = time.monotonic() + REJOIN_INTERVAL_S
            self.event("refused", m, why=f"{type(e).__name__}: {e}")

    # -- keys ---------------------------------------------------------------------------------
    def _match(self, m: Member) -> None:
        """The member's objects under pool handles; a public key that differs from another
        member's under the same CKA_ID is a PoolError."""
        with m.service_lock:
            self._match_locked(m)

    def _match_locked(self, m: Member) -> None:
        fn = _card(m)
        assert m.service is not None
        objs = find(fn, m.service, {})
        handles: dict[int, int] = {}
        pubs: dict[bytes, dict[int, bytes]] = {}
        for h in objs:
            a = read_attributes(fn, m.service, h, _OBJ_ATTRS)
            cls = ulong(a.get(CKA.CLASS))
            if cls is None:
                continue
            kid = a.get(CKA.ID, b"")
            key = (cls, kid, b"" if kid else a.get(CKA.LABEL, b""))
            pub: dict[int, bytes] | None = None
            if cls in (CKO.PUBLIC_KEY, CKO.PRIVATE_KEY):
                pub = _from_private(a)
            elif cls == CKO.CERTIFICATE and CKA.VALUE in a:
                pub = _from_certificate(a[CKA.VALUE])
            if pub is not None and kid:
                pubs.setdefault(kid, pub)
            with self.lock:
                ph = self.objects.setdefault(key, len(self.objects) + 1)
            handles[ph] = h
        with self.lock:
            for kid, pub in pubs.items():
                fp = _fingerprint(pub)
                known = self.pubkeys.get(kid)
                if known is not None and known[0] != fp and self._pub_from.get(kid) != m.name:
                    raise PoolError(f"CKA_ID {kid.hex()}: the public key on member {m.name} differs from "
                                    f"the one on member {self._pub_from[kid]}")
                if known is None or self._pub_from.get(kid) == m.name:
                    self.pubkeys[kid] = (fp, pub)
                    self._pub_from[kid] = m.name
            m.handles = handles
            m.reverse = {v: k for k, v in handles.items()}

    def _check_keys(self) -> None:
        """Report keys that only some members hold (the start's and every join's picture)."""
        up = [m for m in self.members if m.state == "up"]
        if not up:
            return
        partial_keys = []
        for key, ph in self.objects.items():
            if key[0] != CKO.PRIVATE_KEY:
                continue
            holders = [m.name for m in up if ph in m.handles]
            if len(holders) != len(up):
                partial_keys.append({"id": key[1].hex(), "on": holders})
        if partial_keys:
            self.event("partial_keys", None, keys=partial_keys)

    def key_report(self) -> dict[str, Any]:
        """For ``sc4dnssec probe``: members and which private keys each holds."""
        keys = {}
        for key, ph in self.objects.items():
            if key[0] == CKO.PRIVATE_KEY:
                keys[key[1].hex()] = [m.name for m in self.members if m.state == "up" and ph in m.handles]
        return {"members": {m.name: m.state for m in self.members}, "private_keys": keys}

    # -- slot and token ---------------------------------------------------------------------------
    def _up(self) -> list[Member]:
        self._probe_absent()
        return [m for m in self.members if m.state == "up"]

    def _first(self) -> Member:
        up = self._up()
        if not up:
            raise PKCS11Error(CKR.DEVICE_REMOVED, "no member of the pool is present")
        return up[0]

    def _slot(self, slot: Any) -> None:
        if int(slot) != POOL_SLOT:
            raise PKCS11Error(CKR.SLOT_ID_INVALID, "the pool has one slot")

    def get_info(self, call: Call, p_info: Any) -> int:
        if self.members:
            return self.members[0].fn("C_GetInfo", p_info)
        return int(self.below["C_GetInfo"](call, p_info))

    def get_slot_list(self, call: Call, token_present: Any, p_list: Any, p_count: Any) -> int:
        if p_count == cabi.NULL:
            return CKR.ARGUMENTS_BAD
        slots = [POOL_SLOT] if not token_present or self._up() else []
        if p_list == cabi.NULL:
            p_count[0] = len(slots)
            return CKR.OK
        if p_count[0] < len(slots):
            p_count[0] = len(slots)
            return CKR.BUFFER_TOO_SMALL
        for i, s in enumerate(slots):
            p_list[i] = s
        p_count[0] = len(slots)
        return CKR.OK

    def get_slot_info(self, call: Call, slot: Any, p_info: Any) -> int:
        call = recorded(call)
        self._slot(slot)
        if p_info == cabi.NULL:
            return CKR.ARGUMENTS_BAD
        fill_text(p_info.slotDescription, f"sc4dnssec card pool of {len(self.config.members)}")
        fill_text(p_info.manufacturerID, "sc4dnssec")
        up = self._up()
        p_info.flags = SlotFlag.REMOVABLE_DEVICE | (SlotFlag.TOKEN_PRESENT if up else 0)
        p_info.hardwareVersion.major = p_info.hardwareVersion.minor = 0
        p_info.firmwareVersion.major = p_info.firmwareVersion.minor = 0
        call.args["pool"] = {m.name: m.state for m in self.members}
        return CKR.OK

    def get_token_info(self, call: Call, slot: Any, p_info: Any) -> int:
        self._slot(slot)
        m = self._first()
        assert m.slot is not None
        rv = m.fn("C_GetTokenInfo", m.slot, p_info)
        if rv != CKR.OK:
            return rv
        fill_text(p_info.label, self.config.label)
        fill_text(p_info.serialNumber, self.config.serial)
        fill_text(p_info.model, "card pool")
        p_info.ulSessionCount = len(self.sessions)
        return CKR.OK

    def get_mechanism_list(self, call: Call, slot: Any, p_list: Any, p_count: Any) -> int:
        """The mechanisms every present member has."""
        self._slot(slot)
        if p_count == cabi.NULL:
            return CKR.ARGUMENTS_BAD
        common: list[int] | None = None
        for m in self._up():
            n = cabi.ffi.new("CK_ULONG *")
            if m.fn("C_GetMechanismList", m.slot, cabi.NULL, n) != CKR.OK:
                continue
            buf = cabi.ffi.new("CK_MECHANISM_TYPE[]", max(int(n[0]), 1))
            if m.fn("C_GetMechanismList", m.slot, buf, n) != CKR.OK:
                continue
            mechs = [int(buf[i]) for i in range(int(n[0]))]
            common = mechs if common is None else [x for x in common if x in mechs]
        if common is None:
            raise PKCS11Error(CKR.DEVICE_REMOVED, "no member of the pool is present")
        if p_list == cabi.NULL:
            p_count[0] = len(common)
            return CKR.OK
        if p_count[0] < len(common):
            p_count[0] = len(common)
            return CKR.BUFFER_TOO_SMALL
        for i, x in enumerate(common):
            p_list[i] = x
        p_count[0] = len(common)
        return CKR.OK

    def get_mechanism_info(self, call: Call, slot: Any, mech: Any, p_info: Any) -> int:
        self._slot(slot)
        m = self._first()
        return m.fn("C_GetMechanismInfo", m.slot, mech, p_info)

    # -- sessions -------------------------------------------------------------------------------
    def open_session(self, call: Call, slot: Any, flags: Any, app: Any, notify: Any, ph: Any) -> int:
        self._slot(slot)
        if ph == cabi.NULL:
            return CKR.ARGUMENTS_BAD
        if not int(flags) & SessionFlag.SERIAL_SESSION:
            return CKR.SESSION_PARALLEL_NOT_SUPPORTED
        self._first()
        with self.lock:
            h = self._next_session
            self._next_session += 1
            self.sessions[h] = PoolSession(int(flags))
        ph[0] = h
        return CKR.OK

    def _session(self, h: Any) -> PoolSession:
        s = self.sessions.get(int(h))
        if s is None:
            raise PKCS11Error(CKR.SESSION_HANDLE_INVALID, "not a pool session")
        return s

    def _member_session(self, m: Member, s: PoolSession) -> int:
        """The member's session for pool session ``s``, opened on first use."""
        got = s.members.get(m.name)
        if got is not None:
            return got
        h = cabi.ffi.new("CK_SESSION_HANDLE *")
        rv = m.fn("C_OpenSession", m.slot, s.flags, cabi.NULL, cabi.NULL, h)
        if rv != CKR.OK:
            raise PKCS11Error(rv, f"member {m.name}: C_OpenSession answered {_rv(rv)}")
        with self.lock:
            s.members[m.name] = int(h[0])
        return int(h[0])

    def close_session(self, call: Call, h: Any) -> int:
        with self.lock:
            s = self.sessions.pop(int(h), None)
        if s is None:
            return CKR.SESSION_HANDLE_INVALID
        self._end_sign(s)
        self._close_member_sessions(s)
        if not self.sessions:
            self._logout_members()
        return CKR.OK

    def close_all_sessions(self, call: Call, slot: Any) -> int:
        self._slot(slot)
        with self.lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for s in sessions:
            self._end_sign(s)
            self._close_member_sessions(s)
        self._logout_members()
        return CKR.OK

    def _close_member_sessions(self, s: PoolSession) -> None:
        by_name = {m.name: m for m in self.members}
        for name, mh in list(s.members.items()):
            m = by_name.get(name)
            if m is not None and m.state == "up":
                m.fn("C_CloseSession", mh)
        s.members.clear()

    def get_session_info(self, call: Call, h: Any, p_info: Any) -> int:
        s = self._session(h)
        if p_info == cabi.NULL:
            return CKR.ARGUMENTS_BAD
        rw = bool(s.flags & SessionFlag.RW_SESSION)
        if self.user == CKU.SO:
            state = CKS.RW_SO_FUNCTIONS
        elif self.user == CKU.USER:
            state = CKS.RW_USER_FUNCTIONS if rw else CKS.RO_USER_FUNCTIONS
        else:
            state = CKS.RW_PUBLIC_SESSION if rw else CKS.RO_PUBLIC_SESSION
        p_info.slotID = POOL_SLOT
        p_info.state = state
        p_info.flags = s.flags
        p_info.ulDeviceError = 0
        return CKR.OK

    # -- login ------------------------------------------------------------------------------------
    def _pin_of(self, m: Member, given: bytes | None) -> bytes | None:
        if m.conf.pin_file:
            with open(m.conf.pin_file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        if m.conf.pin_env:
            value = os.environ.get(m.conf.pin_env)
            return value.encode() if value is not None else None
        return given if given is not None else self._consumer_pin

    def _login_member(self, m: Member, user: int, given: bytes | None) -> int:
        try:
            pin = self._pin_of(m, given)
        except OSError as e:
            self.event("refused", m, why=f"pin_file: {e.strerror}")
            return CKR.PIN_INCORRECT
        if pin is None:
            return CKR.PIN_INCORRECT
        buf = cabi.ffi.new("CK_UTF8CHAR[]", pin)
        with m.service_lock:
            return m.fn("C_Login", m.service, user, buf, len(pin))

    def login(self, call: Call, h: Any, user: Any, p_pin: Any, pin_len: Any) -> int:
        call = recorded(call)
        with self._login_lock:  # threads logging in at once: one logs the members in, the others are told so
            return self._login(call, h, user, p_pin, pin_len)

    def _login(self, call: Call, h: Any, user: Any, p_pin: Any, pin_len: Any) -> int:
        self._session(h)
        if self.user is not None:
            return CKR.USER_ALREADY_LOGGED_IN
        given = read_bytes(p_pin, int(pin_len)) if p_pin != cabi.NULL else None
        results: dict[str, str] = {}
        first_error: int | None = None
        ok = False
        for m in self._up():
            rv = self._login_member(m, int(user), given)
            results[m.name] = _rv(rv)
            if rv in (CKR.OK, CKR.USER_ALREADY_LOGGED_IN):
                ok = True
            elif rv in (CKR.PIN_INCORRECT, CKR.PIN_LOCKED) and m.conf.pin_file is None and m.conf.pin_env is None:
                # The consumer's PIN is wrong: trying it on the other cards would count down their PINs too.
                first_error = rv
                break
            elif first_error is None:
                first_error = rv
        call.args["pool"] = results
        if not ok:
            return int(first_error if first_error is not None else CKR.DEVICE_REMOVED)
        self.user = int(user)
        if any(m.conf.pin_file is None and m.conf.pin_env is None for m in self.members):
            self._consumer_pin = given
        for m in self._up():  # private objects are visible now
            try:
                self._match(m)
            except PoolError as e:
                self._leave(m, str(e))
                self.event("refused", m, why=str(e))
        self._check_keys()
        return CKR.OK

    def logout(self, call: Call, h: Any) -> int:
        self._session(h)
        with self._login_lock:
            if self.user is None:
                return CKR.USER_NOT_LOGGED_IN
            self._logout_members()
        return CKR.OK

    def _logout_members(self) -> None:
        if self.user is None:
            return
        for m in self.members:
            if m.state == "up" and m.service is not None:
                with m.service_lock:
                    m.fn("C_Logout", m.service)
        self.user = None
        self._consumer_pin = None

    # -- objects ------------------------------------------------------------------------------------
    def _holders(self, ph: int) -> list[Member]:
        return sorted((m for m in self._up() if ph in m.handles), key=lambda m: m.busy)

    def find_objects_init(self, call: Call, h: Any, p_tmpl: Any, count: Any) -> int:
        call = recorded(call)
        s = self._session(h)
        if s.found is not None:
            return CKR.OPERATION_ACTIVE
        template = {a.type: a.value for a in read_template(p_tmpl, int(count)) if a.value is not None}
        found: set[int] = set()
        asked = []
        for m in self._up():
            try:
                ms = self._member_session(m, s)
                for mh in find(_card(m), ms, template):
                    ph = m.reverse.get(mh)
                    if ph is None:  # an object that appeared after matching
                        self._match(m)
                        ph = m.reverse.get(mh)
                    if ph is not None:
                        found.add(ph)
                asked.append(m.name)
            except (PKCS11Error, PoolError) as e:
                if isinstance(e, PKCS11Error) and e.rv in FAILOVER:
                    self._leave(m, f"C_FindObjects answered {_rv(e.rv)}")
                    continue
                raise
        if not asked:
            raise PKCS11Error(CKR.DEVICE_REMOVED, "no member of the pool is present")
        call.args["members"] = asked
        s.found = sorted(found)
        return CKR.OK

    def find_objects(self, call: Call, h: Any, p_obj: Any, max_count: Any, p_count: Any) -> int:
        s = self._session(h)
        if s.found is None:
            return CKR.OPERATION_NOT_INITIALIZED
        if p_count == cabi.NULL or (p_obj == cabi.NULL and int(max_count)):
            return CKR.ARGUMENTS_BAD
        n = min(int(max_count), len(s.found))
        for i in range(n):
            p_obj[i] = s.found[i]
        del s.found[:n]
        p_count[0] = n
        return CKR.OK

    def find_objects_final(self, call: Call, h: Any) -> int:
        s = self._session(h)
        if s.found is None:
            return CKR.OPERATION_NOT_INITIALIZED
        s.found = None
        return CKR.OK

    def _on_object(self, call: Call, name: str, h: Any, obj: Any, *rest: Any) -> int:
        call = recorded(call)
        s = self._session(h)
        ph = int(obj)
        if not any(ph in m.handles for m in self.members):
            return CKR.OBJECT_HANDLE_INVALID
        for m in self._holders(ph):
            try:
                rv = m.fn(name, self._member_session(m, s), m.handles[ph], *rest)
            except PKCS11Error as e:
                rv = e.rv
            if rv in FAILOVER:
                self._leave(m, f"{name} answered {_rv(rv)}")
                continue
            call.args["member"] = m.name
            return rv
        raise PKCS11Error(CKR.DEVICE_REMOVED, "no member holding the object is present")

    def get_attribute_value(self, call: Call, h: Any, obj: Any, p_tmpl: Any, count: Any) -> int:
        return self._on_object(call, "C_GetAttributeValue", h, obj, p_tmpl, count)

    def get_object_size(self, call: Call, h: Any, obj: Any, p_size: Any) -> int:
        return self._on_object(call, "C_GetObjectSize", h, obj, p_size)

    # -- signing ------------------------------------------------------------------------------------
    def sign_init(self, call: Call, h: Any, p_mech: Any, key: Any) -> int:
        call = recorded(call)
        s = self._session(h)
        if s.sign is not None:
            return CKR.OPERATION_ACTIVE
        mech = read_mechanism(p_mech)
        ph = int(key)
        obj = next((k for k, v in self.objects.items() if v == ph), None)
        if obj is None:
            return CKR.KEY_HANDLE_INVALID
        if obj[0] != CKO.PRIVATE_KEY:
            return CKR.KEY_FUNCTION_NOT_PERMITTED
        pub = self.pubkeys.get(obj[1])
        if pub is None:
            raise PKCS11Error(CKR.KEY_FUNCTION_NOT_PERMITTED, "no public key for this CKA_ID: "
                              "the pool cannot verify what the cards sign")
        Verifier(mech.type, mech.parameter, public_key(pub[1]))  # a mechanism the pool cannot verify: refused
        op = SignOp(mech.type, mech.parameter, ph, None)
        self._run_sign(call, s, op, None)  # SignInit on the chosen member
        s.sign = op
        return CKR.OK

    def sign(self, call: Call, h: Any, p_data: Any, data_len: Any, p_sig: Any, p_len: Any) -> int:
        s = self._session(h)
        op = s.sign
        if op is None or op.multipart:
            return CKR.OPERATION_NOT_INITIALIZED
        return self._finish(call, s, op, read_bytes(p_data, int(data_len)), p_sig, p_len)

    def sign_update(self, call: Call, h: Any, p_part: Any, part_len: Any) -> int:
        s = self._session(h)
        op = s.sign
        if op is None:
            return CKR.OPERATION_NOT_INITIALIZED
        part = read_bytes(p_part, int(part_len))
        if len(op.parts) + len(part) > _MAX_PARTS:
            self._end_sign(s)
            return CKR.DATA_LEN_RANGE
        op.multipart = True
        op.parts += part
        return CKR.OK

    def sign_final(self, call: Call, h: Any, p_sig: Any, p_len: Any) -> int:
        s = self._session(h)
        op = s.sign
        if op is None:
            return CKR.OPERATION_NOT_INITIALIZED
        return self._finish(call, s, op, bytes(op.parts), p_sig, p_len)

    def _finish(self, call: Call, s: PoolSession, op: SignOp, data: bytes, p_sig: Any, p_len: Any) -> int:
        call = recorded(call)
        if p_len == cabi.NULL:
            return CKR.ARGUMENTS_BAD
        if op.cached is not None and op.cached[0] == data:
            signature = op.cached[1]
            call.args["member"] = op.cached[2]
            call.args["signed_at_length_query"] = True
        else:
            try:
                signature = self._run_sign(call, s, op, data)
            except PKCS11Error:
                self._end_sign(s)
                raise
        signer = str(call.args.get("member"))
        rv = write_output(p_sig, p_len, signature)
        if p_sig == cabi.NULL or rv == CKR.BUFFER_TOO_SMALL:
            op.cached = (data, signature, signer)  # the operation stays active: the signature is handed out next
            return rv
        self._end_sign(s)
        call.src = "card"
        return rv

    def _end_sign(self, s: PoolSession) -> None:
        op = s.sign
        if op is None:
            return
        s.sign = None
        m = op.member
        if m is None:
            return
        with self.lock:
            m.busy -= 1
        op.member = None
        op.session = None
        if op.active_on is not None:
            # Ended before a C_Sign reached the card: the member's operation is still active there;
            # closing its session ends it, and the next use opens another.
            with self.lock:
                if s.members.get(m.name) == op.active_on:
                    del s.members[m.name]
            if m.state == "up":
                m.fn("C_CloseSession", op.active_on)
            op.active_on = None

    def _choose(self, op: SignOp, tried: set[str]) -> Member:
        with self.lock:
            holders = [m for m in self._up() if op.key in m.handles and m.name not in tried]
            if not holders:
                raise PKCS11Error(CKR.DEVICE_REMOVED, "no member of the pool holding the key can sign")
            # least busy; among equals, the next after the last chosen (round robin)
            self._turn += 1
            n = len(self.members)
            m = min(holders, key=lambda x: (x.busy, (self.members.index(x) - self._turn) % n))
            m.busy += 1
            return m

    def _run_sign(self, call: Call, s: PoolSession, op: SignOp, data: bytes | None) -> bytes:
        """SignInit (``data`` None) or finish the operation on a member; on a member's failure or
        timeout, the whole operation again on the next member.  The result has been verified."""
        tried: set[str] = set()
        failovers: list[dict[str, str]] = []
        while True:
            m = op.member
            if m is None:
                try:
                    m = self._choose(op, tried)
                except PKCS11Error:
                    if failovers:
                        call.args["failover"] = failovers
                    raise
                op.member = m
                fresh = True
            else:
                fresh = False
            call.args["member"] = m.name
            try:
                if fresh:
                    ms = self._member_session(m, s)
                    self._member_call(m, s, ms, "sign_init", op, None)
                    op.active_on = op.session = ms
                else:
                    # the member session of the SignInit (another thread's failure may have made the
                    # member leave and dropped the session's mapping meanwhile)
                    if m.state != "up" or op.session is None:
                        raise _Failover(f"member {m.state} since C_SignInit")
                    ms = op.session
                if data is None:
                    if failovers:
                        call.args["failover"] = failovers
                    return b""
                op.active_on = None  # whatever C_Sign answers, it ends the member's operation
                signature = self._member_call(m, s, ms, "sign", op, data)
                verifier = Verifier(op.mechanism, op.parameter, public_key(self.pubkeys[self.key_id(op.key)][1]))
                verifier.update(data)
                try:
                    verifier.verify(signature)
                except PKCS11Error as e:
                    self.event("bad_signature", m, why=e.detail or _rv(e.rv))
                    raise _Failover("bad signature") from None
                if failovers:
                    call.args["failover"] = failovers
                return signature
            except _Failover as f:
                failovers.append({"member": m.name, "why": str(f)})
            except PKCS11Error as e:
                if e.rv == CKR.OPERATION_NOT_INITIALIZED and not fresh:
                    # the pool holds the operation as initialised: the member lost it (its session
                    # ended under it); the operation is done again elsewhere, the member stays
                    failovers.append({"member": m.name, "why": "operation lost on the member"})
                elif e.rv not in FAILOVER:
                    with self.lock:
                        m.busy -= 1
                    op.member = None
                    if failovers:
                        call.args["failover"] = failovers
                    raise
                else:
                    failovers.append({"member": m.name, "why": _rv(e.rv)})
                    self._leave(m, f"answered {_rv(e.rv)}")
            with self.lock:
                m.busy -= 1
            op.member = op.session = None
            tried.add(m.name)
            self.event("failover", m, fn=call.fn, why=failovers[-1]["why"])

    def key_id(self, ph: int) -> bytes:
        return next(k[1] for k, v in self.objects.items() if v == ph)

    def _member_call(self, m: Member, s: PoolSession, ms: int, what: str, op: SignOp, data: bytes | None) -> bytes:
        """One card call in the member's worker, on pool-owned buffers, waited for ``timeout_ms``."""
        ffi = cabi.ffi
        if what == "sign_init":
            mech = ffi.new("CK_MECHANISM *")
            param = ffi.new("CK_BYTE[]", op.parameter) if op.parameter else ffi.NULL
            mech.mechanism, mech.pParameter, mech.ulParameterLen = op.mechanism, param, len(op.parameter)
            keep: tuple[Any, ...] = (mech, param)

            def work() -> bytes:
                rv = m.fn("C_SignInit", ms, mech, m.handles[op.key])
                if rv != CKR.OK:
                    raise PKCS11Error(rv, f"member {m.name}: C_SignInit answered {_rv(rv)}")
                return b""
        else:
            assert data is not None
            buf = ffi.new("CK_BYTE[]", data) if data else ffi.new("CK_BYTE[]", 1)
            out = ffi.new("CK_BYTE[]", _SIG_MAX)
            n = ffi.new("CK_ULONG *", _SIG_MAX)
            keep = (buf, out, n)

            def work() -> bytes:
                rv = m.fn("C_Sign", ms, buf, len(data), out, n)
                if rv != CKR.OK:
                    raise PKCS11Error(rv, f"member {m.name}: C_Sign answered {_rv(rv)}")
                return ffi.buffer(out, int(n[0]))[:]
        assert m.executor is not None
        fut = m.executor.submit(work)
        try:
            return fut.result(timeout=self.config.timeout_s)
        except FutureTimeout:
            self._hung(m, s, ms, fut, keep)
            raise _Failover(f"no answer within {self.config.timeout_s:g} s") from None

    def _hung(self, m: Member, s: PoolSession, ms: int, fut: Future[bytes], keep: tuple[Any, ...]) -> None:
        """Set the member aside until the abandoned call answers; its session is then closed."""
        with self.lock:
            was = m.state
            m.state = "hung"
            s.members.pop(m.name, None)
        self.event("timeout", m, timeout_ms=int(self.config.timeout_s * 1000), was=was)

        def answered(f: Future[bytes], _keep: tuple[Any, ...] = keep) -> None:
            exc = f.exception()
            rv = _rv(exc.rv) if isinstance(exc, PKCS11Error) else ("CKR_OK" if exc is None else type(exc).__name__)
            try:
                m.fn("C_CloseSession", ms)
            except Exception:  # noqa: BLE001, S110 - the member is re-checked by the next probe
                pass
            with self.lock:
                if m.state == "hung":
                    m.state = "absent"
                    m.next_probe = 0.0  # rejoin at the next routing decision
            self.event("answered", m, rv=rv, result="discarded")

        fut.add_done_callback(answered)


class _Failover(Exception):
    """A member's attempt failed in a way another member may not: try the next one."""


def _card(m: Member) -> dict[str, Callable[..., int]]:
    return {name: partial(fn, INTERNAL) for name, fn in m.table.items()}


def _fingerprint(pub: dict[int, bytes]) -> str:
    key = public_key(pub)
    return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _rv(rv: int) -> str:
    return name_of(CKR, int(rv))


def _unsupported(call: Call, *args: Any) -> int:
    return CKR.FUNCTION_NOT_SUPPORTED

