"""Process-wide state of the shim and its start-up inside the host process."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from shim import config as config_mod
from shim.audit.writer import AuditUnavailable, AuditWriter
from shim.backend import Backend
from shim.constants import CKR, name_of
from shim.dispatch import Call

VERSION = (0, 1)

# CK_RV -> name for every defined CKR: name_of() builds an enum member per call (~1 µs).
_RV_NAMES: dict[int, str] = {int(v): name_of(CKR, v) for v in CKR}


def _report(message: str) -> None:
    """Operator-facing problems go to stderr and syslog: the audit log may be the problem."""
    print(f"smartcards4dnssec: {message}", file=sys.stderr, flush=True)
    try:
        import syslog

        syslog.syslog(syslog.LOG_ERR, f"smartcards4dnssec: {message}")
    except Exception:  # noqa: BLE001 - reporting must not fail the caller
        pass


class Shim:
    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.lock = threading.RLock()
        self.initialized = False
        self._fork_generation = lib.sc4_fork_generation
        self.inherited = False  # state came from the parent across fork()
        self._backend: Backend | None = None
        self.boot_error: str | None = None
        try:
            self.config = config_mod.load()
        except config_mod.ConfigError as e:
            self.boot_error = str(e)
            self.config = config_mod.Config(
                backend=None, audit_path=os.environ.get("SC4DNSSEC_AUDIT_LOG")
                or config_mod.default_audit_path(os.environ)
            )
            _report(f"configuration error: {e}")
        self.audit = AuditWriter(
            self.config.audit_path,
            fsync=self.config.audit_fsync,
            on_failure=self.config.audit_on_failure,
            syslog=self.config.audit_syslog,
            syslog_path=self.config.audit_syslog_socket,
            locked_append=_locked_append(lib),
        )
        self._allow = self.config.allow_functions
        self.sessions: dict[int, Any] = {}
        from shim.soft.state import Completion

        self.soft = Completion(self)  # software completion (shim/soft/)
        self.record("load", args={"version": "{}.{}".format(*VERSION), "python": sys.version.split()[0],
                                  "module": _module_path(lib)})
        self.record("config", args={"source": self.config.source, "backend": self.config.backend,
                                    "audit": self.config.audit_path, "fsync": self.config.audit_fsync,
                                    "on_failure": self.config.audit_on_failure,
                                    "mask_functions": sorted(self.config.mask_functions),
                                    "mask_mechanisms": sorted(self.config.mask_mechanisms),
                                    "advertise_keygen": self.config.advertise_keygen,
                                    "allow_functions": None if self._allow is None else sorted(self._allow)},
                    error=self.boot_error)

    # -- backend -------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            from shim.errors import PKCS11Error

            raise PKCS11Error(CKR.CRYPTOKI_NOT_INITIALIZED, "no backend loaded")
        return self._backend

    def load_backend(self) -> Backend:
        from shim.errors import PKCS11Error

        if self._backend is not None:
            return self._backend
        if self.boot_error:
            raise PKCS11Error(CKR.GENERAL_ERROR, f"configuration error: {self.boot_error}")
        if not self.config.backend:
            raise PKCS11Error(CKR.GENERAL_ERROR, "no backend: set SC4DNSSEC_BACKEND or 'backend' in SC4DNSSEC_CONF")
        try:
            self._backend = Backend(self.config.backend, self.config.mask_functions)
        except PKCS11Error as e:
            _report(e.detail)
            raise
        self.record("backend", args=self._backend.identity())
        return self._backend

    # -- fork ------------------------------------------------------------------
    def fork_generation_changed(self) -> bool:
        return bool(self._lib.sc4_fork_generation != self._fork_generation)

    def after_fork(self) -> None:
        """In a child: PKCS#11 requires a new C_Initialize; the audit chain
        continues from the child's own file descriptor and epoch."""
        self._fork_generation = self._lib.sc4_fork_generation
        self.lock = threading.RLock()
        self.audit.after_fork()
        if self.initialized:
            self.initialized = False
            self.inherited = True
        self.sessions.clear()
        self.soft.reset()

    # -- policy and audit ------------------------------------------------------
    def denied(self, name: str) -> bool:
        return self._allow is not None and name not in self._allow and name != "C_Initialize"

    def record(self, kind: str, **fields: Any) -> None:
        try:
            self.audit.write(kind, **fields)
        except AuditUnavailable as e:
            _report(f"audit log unavailable: {e}")

    def record_call(self, call: Call, rv: int, t0: int) -> int:
        dur_us = (time.perf_counter_ns() - t0) // 1000
        rv_name = _RV_NAMES.get(rv)
        if rv_name is None:
            rv_name = name_of(CKR, rv)
        try:
            self.audit.write("call", fn=call.fn, args=call.args, rv=rv_name, dur_us=dur_us,
                             src=call.src, error=call.error)
        except AuditUnavailable:
            # fail-closed: a call that cannot be recorded does not succeed.
            return int(CKR.GENERAL_ERROR) if rv == CKR.OK else rv
        except Exception as e:  # noqa: BLE001 - a bug in the audit path must not reach the host
            _report(f"audit record for {call.fn} failed: {type(e).__name__}: {e}")
            if self.config.audit_on_failure == "fail-closed":
                return int(CKR.GENERAL_ERROR) if rv == CKR.OK else rv
        return rv


def _locked_append(lib: Any) -> Callable[[int, int, bytes, bool], int]:
    """The core's C append (one GIL release per record) as the writer expects it."""
    from shim.ffi import ffi

    append = lib.sc4_audit_append

    def locked_append(fd: int, expected: int, line: bytes, sync: bool) -> int:
        size = int(append(fd, expected, line, len(line), int(sync)))
        if size == -1:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        return size

    return locked_append


def _module_path(lib: Any) -> str:
    from shim.ffi import ffi

    return os.path.abspath(ffi.string(lib.sc4_core_path()).decode())


SHIM: Shim | None = None


def boot(ffi: Any, lib: Any) -> None:
    """Called once by the core's embedding init code, before any C_* entry runs."""
    global SHIM
    from shim import dispatch

    SHIM = Shim(lib)
    dispatch.install(SHIM, ffi)
