"""The guard: which calls are admitted (initialisation, policy, fork, bounds).

Every function passes the guard's gate: in a forked child the first call resets
the shim (PKCS#11 requires a new C_Initialize there, and the audit chain goes on
in a new epoch); before C_Initialize only C_Initialize is admitted; with
``[policy] allow_functions`` set, other functions answer
CKR_ACTION_PROHIBITED, and so do the functions the ceremony window refuses
(``[policy] ceremony_window``, :mod:`shim.ceremony.policy`); a length or count beyond :data:`BOUNDS` answers
CKR_ARGUMENTS_BAD before anything reaches the card (a backend trusts them: SoftHSM
crashed on a C_Login with ulPinLen = 2^40).  The guard also owns library
initialisation itself, and C_Finalize waits for the calls in flight: the
backend frees what they use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from shim import cabi
from shim.call import Call, LayerFn, Table
from shim.ceremony.policy import Window
from shim.constants import CKR, InitFlag
from shim.errors import PKCS11Error
from shim.functions import BY_NAME, FunctionSpec
from shim.spec import ALLOWED, PARAMETERLESS

BEFORE_INIT = frozenset({"C_Initialize"})  # C_GetFunctionList is answered in C

#: Sane upper bounds, by the kind of argument (far above any real use, far below what makes a
#: backend read or allocate terabytes): a PIN's length, a template's attribute count, a template
#: value's length, a data or output length, a mechanism parameter's length.
BOUNDS: dict[str, int] = {"pin": 4096, "attributes": 4096, "value": 1 << 24, "data": 1 << 30,
                          "mechanism_parameter": 1 << 16}
#: Calls C_Finalize does not wait for: C_WaitForSlotEvent may block until C_Finalize ends it.
NOT_AWAITED = frozenset({"C_WaitForSlotEvent", "C_Finalize", "C_Initialize"})
#: How long C_Finalize waits for the calls in flight before it goes on (a card that never answers
#: must not hang the host's shutdown); the record says how many were still running.
FINALIZE_WAIT_S = 10.0

Check = Callable[[tuple[Any, ...]], str | None]


class Guard:
    def __init__(self, below: Table, *, allow: frozenset[str] | None, load_backend: Callable[[], object],
                 on_fork: tuple[Callable[[], None], ...] = (), window: Window | None = None) -> None:
        self.below = below
        self._allow = allow
        self.window = window
        self._load_backend = load_backend
        self._on_fork = on_fork
        self.lock = threading.RLock()
        self.initialized = False
        self.inherited = False  # state came from the parent across fork()
        self._fork_generation = cabi.lib.sc4_fork_generation
        self._flight: dict[int, int] = {}  # thread id -> calls of that thread inside the layers below
        self._finalizing = False

    def overrides(self) -> Table:
        """The functions the guard serves itself; every function, its own or not, passes the gate."""
        return {"C_Initialize": self.initialize, "C_Finalize": self.finalize}

    def table(self) -> Table:
        own = self.overrides()
        return {name: self._gate(name, own.get(name, fn)) for name, fn in self.below.items()}

    def denied(self, name: str) -> bool:
        return self._allow is not None and name not in self._allow and name not in BEFORE_INIT

    # -- the gate ------------------------------------------------------------------
    def _gate(self, name: str, fn: LayerFn) -> LayerFn:
        needs_init = name not in BEFORE_INIT
        denied = self.denied(name)
        lib = cabi.lib
        checks = bound_checks(BY_NAME[name]) if name in BY_NAME else []
        refusal = CKR.ARGUMENTS_BAD
        awaited = name not in NOT_AWAITED
        flight = self._flight
        ident = threading.get_ident
        window = self.window

        def gate(call: Call, *args: Any) -> int:
            if lib.sc4_fork_generation != self._fork_generation:
                self.after_fork()
            if needs_init and not self.initialized:
                return CKR.CRYPTOKI_NOT_INITIALIZED
            if denied:
                raise PKCS11Error(CKR.ACTION_PROHIBITED, "denied by [policy] allow_functions")
            if window is not None and needs_init:
                why = window.refusal(name)
                if why is not None:
                    raise PKCS11Error(CKR.ACTION_PROHIBITED, why)
            for check in checks:
                why = check(args)
                if why is not None:
                    raise PKCS11Error(refusal if refusal in ALLOWED[name] else CKR.MECHANISM_PARAM_INVALID, why)
            if not awaited:
                return fn(call, *args)
            # Counted before the initialisation is checked again, so that C_Finalize, which sets
            # _finalizing first and then waits for the count, cannot miss this call.
            tid = ident()
            n = flight.get(tid, 0)
            flight[tid] = n + 1
            try:
                if self._finalizing or (needs_init and not self.initialized):
                    return CKR.CRYPTOKI_NOT_INITIALIZED
                return fn(call, *args)
            finally:
                if n:
                    flight[tid] = n
                else:
                    del flight[tid]

        gate.__name__ = f"gate_{name}"
        return gate

    def after_fork(self) -> None:
        """In a child: PKCS#11 requires a new C_Initialize; every layer forgets its sessions."""
        self._fork_generation = cabi.lib.sc4_fork_generation
        self.lock = threading.RLock()
        self._flight.clear()  # the parent's other threads do not exist here
        self._finalizing = False
        for hook in self._on_fork:
            hook()
        if self.initialized:
            self.initialized = False
            self.inherited = True

    # -- overrides -----------------------------------------------------------------
    def initialize(self, call: Call, p_init_args: Any) -> int:
        with self.lock:
            if self.initialized:
                return CKR.CRYPTOKI_ALREADY_INITIALIZED
            flags = _check_init_args(p_init_args, call)
            if self.window is not None:
                self.window.refresh()
            self._load_backend()
            args = cabi.ffi.new("CK_C_INITIALIZE_ARGS *")
            args.flags = InitFlag.OS_LOCKING_OK | (flags & InitFlag.LIBRARY_CANT_CREATE_OS_THREADS)
            below = self.below
            rv = below["C_Initialize"](call, args)
            if rv == CKR.CRYPTOKI_ALREADY_INITIALIZED and self.inherited:
                # A forked child: the backend still holds the parent's state.
                below["C_Finalize"](call, cabi.NULL)
                rv = below["C_Initialize"](call, args)
                call.args["reinitialised_after_fork"] = True
            elif rv == CKR.CRYPTOKI_ALREADY_INITIALIZED:
                # Someone else in this process initialised the same library: share it.
                call.args["backend_shared"] = True
                rv = CKR.OK
            if rv == CKR.OK:
                self.initialized = True
                self.inherited = False
            return int(rv)

    def finalize(self, call: Call, p_reserved: Any) -> int:
        if p_reserved != cabi.NULL:
            return CKR.ARGUMENTS_BAD
        with self.lock:
            if not self.initialized:
                return CKR.CRYPTOKI_NOT_INITIALIZED
            self._finalizing = True
            try:
                waited = self._wait_for_calls_in_flight()
                if waited:
                    call.args["waited_for_calls"] = waited
                rv = self.below["C_Finalize"](call, cabi.NULL)
                self.initialized = False
            finally:
                self._finalizing = False
            return int(rv)

    def _wait_for_calls_in_flight(self) -> int:
        """Wait until no other thread is inside the layers below; how many were there at first.
        Calls arriving meanwhile are refused (CKR_CRYPTOKI_NOT_INITIALIZED) by the gate."""
        me = threading.get_ident()
        others = sum(n for t, n in list(self._flight.items()) if t != me)
        if not others:
            return 0
        deadline = time.monotonic() + FINALIZE_WAIT_S
        while any(t != me for t in list(self._flight)) and time.monotonic() < deadline:
            time.sleep(0.001)
        still = sum(n for t, n in list(self._flight.items()) if t != me)
        if still:
            raise PKCS11Error(CKR.FUNCTION_FAILED, f"{still} call(s) still in flight after {FINALIZE_WAIT_S:g} s")
        return others


def _check_init_args(p_init_args: Any, call: Call) -> int:
    """PKCS#11 v2.40 5.4 C_Initialize argument rules.  The shim always locks
    with OS primitives (Python's), so application mutex callbacks without
    CKF_OS_LOCKING_OK cannot be honoured: CKR_CANT_LOCK, as the spec says."""
    if p_init_args == cabi.NULL:
        return 0
    a = cabi.ffi.cast("CK_C_INITIALIZE_ARGS *", p_init_args)
    if a.pReserved != cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "pReserved must be NULL")
    given = [f != cabi.NULL for f in (a.CreateMutex, a.DestroyMutex, a.LockMutex, a.UnlockMutex)]
    flags = int(a.flags)
    call.args["init_flags"] = hex(flags)
    if any(given) and not all(given):
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "some but not all mutex callbacks given")
    if all(given) and not flags & InitFlag.OS_LOCKING_OK:
        raise PKCS11Error(CKR.CANT_LOCK, "application mutexes without CKF_OS_LOCKING_OK")
    return flags


def bound_checks(spec: FunctionSpec) -> list[Check]:
    """The bounds of ``spec``'s lengths and counts (:data:`BOUNDS`), from its parameter types."""
    checks: list[Check] = []
    params = spec.params
    for i, p in enumerate(params):
        nxt = params[i + 1] if i + 1 < len(params) else None
        if nxt is not None and nxt.ctype == "CK_ULONG" and p.ctype == "CK_UTF8CHAR_PTR":
            checks.append(_max_ulong(i + 1, nxt.name, BOUNDS["pin"]))
        elif nxt is not None and nxt.ctype == "CK_ULONG" and p.ctype == "CK_BYTE_PTR":
            checks.append(_max_ulong(i + 1, nxt.name, BOUNDS["data"]))
        elif nxt is not None and nxt.ctype == "CK_ULONG" and p.ctype == "CK_ATTRIBUTE_PTR":
            checks.append(_template_bounds(i, nxt.name, output=spec.name == "C_GetAttributeValue"))
        elif p.ctype == "CK_MECHANISM_PTR":
            checks.append(_mechanism_bounds(i))
    return checks


def _max_ulong(i: int, what: str, limit: int) -> Check:
    def check(args: tuple[Any, ...]) -> str | None:
        return None if int(args[i]) <= limit else f"{what} {int(args[i])} beyond {limit}"

    return check


def _template_bounds(i: int, what: str, *, output: bool) -> Check:
    limit, value_limit = BOUNDS["attributes"], BOUNDS["value"]

    def check(args: tuple[Any, ...]) -> str | None:
        ptr, n = args[i], int(args[i + 1])
        if n > limit:
            return f"{what} {n} beyond {limit}"
        if output or ptr == cabi.NULL:  # an output buffer's size is only an upper bound to write to
            return None
        for k in range(n):
            if int(ptr[k].ulValueLen) > value_limit:
                return f"attribute {k} ulValueLen {int(ptr[k].ulValueLen)} beyond {value_limit}"
        return None

    return check


def _mechanism_bounds(i: int) -> Check:
    limit = BOUNDS["mechanism_parameter"]

    def check(args: tuple[Any, ...]) -> str | None:
        m = args[i]
        if m == cabi.NULL or int(m.ulParameterLen) <= limit or int(m.mechanism) in PARAMETERLESS:
            return None
        return f"ulParameterLen {int(m.ulParameterLen)} beyond {limit}"

    return check
