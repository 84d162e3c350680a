"""The guard: which calls are admitted (initialisation, policy, fork).

Every function passes the guard's gate: in a forked child the first call resets
the shim (PKCS#11 requires a new C_Initialize there, and the audit chain goes on
in a new epoch); before C_Initialize only C_Initialize is admitted; with
``[policy] allow_functions`` set, other functions answer
CKR_ACTION_PROHIBITED.  The guard also owns library initialisation itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from shim import cabi
from shim.call import Call, LayerFn, Table
from shim.constants import CKR, InitFlag
from shim.errors import PKCS11Error

BEFORE_INIT = frozenset({"C_Initialize"})  # C_GetFunctionList is answered in C


class Guard:
    def __init__(self, below: Table, *, allow: frozenset[str] | None, load_backend: Callable[[], object],
                 on_fork: tuple[Callable[[], None], ...] = ()) -> None:
        self.below = below
        self._allow = allow
        self._load_backend = load_backend
        self._on_fork = on_fork
        self.lock = threading.RLock()
        self.initialized = False
        self.inherited = False  # state came from the parent across fork()
        self._fork_generation = cabi.lib.sc4_fork_generation

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

        def gate(call: Call, *args: Any) -> int:
            if lib.sc4_fork_generation != self._fork_generation:
                self.after_fork()
            if needs_init and not self.initialized:
                return CKR.CRYPTOKI_NOT_INITIALIZED
            if denied:
                raise PKCS11Error(CKR.ACTION_PROHIBITED, "denied by [policy] allow_functions")
            return fn(call, *args)

        gate.__name__ = f"gate_{name}"
        return gate

    def after_fork(self) -> None:
        """In a child: PKCS#11 requires a new C_Initialize; every layer forgets its sessions."""
        self._fork_generation = cabi.lib.sc4_fork_generation
        self.lock = threading.RLock()
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
            rv = self.below["C_Finalize"](call, cabi.NULL)
            self.initialized = False
            return int(rv)


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
