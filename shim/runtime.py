"""The shim inside the host process: configuration, and the stack of layers composed at boot.

From the top, every call passes: audit (summary, record, fail-closed) -> guard
(fork, initialisation, policy) -> spec fixups -> completion (``shim/soft``) ->
base (the backend).  Each layer is built over the table of the one below; the
composition in :meth:`Shim.__init__` is the whole wiring.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from typing import Any

from shim import cabi
from shim import config as config_mod
from shim.audit.schema import DISCOVERY
from shim.audit.writer import AuditWriter
from shim.backend import Backend
from shim.cabi import APPEND_NOWAIT, APPEND_SYNC
from shim.ceremony.policy import Window
from shim.constants import CKR
from shim.discovery import Noter
from shim.errors import PKCS11Error
from shim.handlers.info import VERSION
from shim.layers.audit import Audit, Entry
from shim.layers.base import Base
from shim.layers.completion import Completion
from shim.layers.fixups import Fixups
from shim.layers.guard import Guard
from shim.layers.pool import Pool
from shim.peer import client_connection
from shim.report import report


class Shim:
    def __init__(self) -> None:
        self.boot_error: str | None = None
        try:
            self.config = config_mod.load()
        except config_mod.ConfigError as e:
            self.boot_error = str(e)
            self.config = config_mod.Config(
                backend=None, audit_path=os.environ.get("SC4DNSSEC_AUDIT_LOG")
                or config_mod.default_audit_path(os.environ)
            )
            report(f"configuration error: {e}")
        cfg = self.config
        self.audit = AuditWriter(
            cfg.audit_path,
            fsync=cfg.audit_fsync,
            on_failure=cfg.audit_on_failure,
            syslog=cfg.audit_syslog,
            syslog_path=cfg.audit_syslog_socket,
            locked_append=locked_append_of(cabi.lib, cabi.ffi, _module_path(cabi.lib)),
        )
        # The stack, bottom up.
        self.base = Base()
        card = self.base.table()
        self.pool: Pool | None = None
        if cfg.pool is not None:  # several cards as one token, between completion and the backend
            self.pool = Pool(card, cfg.pool, default_module=lambda: cfg.backend,
                             record=lambda kind, **f: self.auditor.record(kind, **f))
            card = self.pool.table()
        self.completion = Completion(card, mask_functions=cfg.mask_functions,
                                     mask_mechanisms=cfg.mask_mechanisms, advertise_keygen=cfg.advertise_keygen,
                                     eddsa_keygen_alias=cfg.eddsa_keygen_alias)
        self.fixups = Fixups(self.completion.table(), slot_of=self.completion.state.sessions.slot_of)
        self.guard = Guard(self.fixups.table(), allow=cfg.allow_functions, load_backend=self.load_backend,
                           on_fork=(self.audit.after_fork, self.completion.reset,
                                    *((self.pool.reset,) if self.pool is not None else ())),
                           window=Window(cfg.ceremony_window) if cfg.ceremony_window else None)
        discovery = Noter()
        self.auditor = Audit(self.guard.table(), self.audit, fail_closed=cfg.audit_on_failure == "fail-closed",
                             discovery=discovery)
        self.entries: dict[str, Entry] = self.auditor.entries()

        load: dict[str, Any] = {"version": "{}.{}".format(*VERSION), "python": sys.version.split()[0],
                                "module": _module_path(cabi.lib)}
        if (found := discovery.initial()) is not None:
            load[DISCOVERY] = found
        # Inside p11-kit-remote (the card host of a remote card) stdin is the client's connection:
        # the record says which one every call of this epoch came from.
        if (client := client_connection(0)) is not None:
            load["client"] = client
        self.auditor.record("load", args=load)
        allow = cfg.allow_functions
        self.auditor.record("config", args={"source": cfg.source, "backend": cfg.backend,
                                            "audit": cfg.audit_path, "fsync": cfg.audit_fsync,
                                            "on_failure": cfg.audit_on_failure,
                                            "mask_functions": sorted(cfg.mask_functions),
                                            "mask_mechanisms": sorted(cfg.mask_mechanisms),
                                            "advertise_keygen": cfg.advertise_keygen,
                                            "eddsa_keygen_alias": cfg.eddsa_keygen_alias,
                                            "allow_functions": None if allow is None else sorted(allow),
                                            **({"pool": {"label": cfg.pool.label, "serial": cfg.pool.serial,
                                                         "members": [m.name for m in cfg.pool.members],
                                                         "timeout_ms": int(cfg.pool.timeout_s * 1000)}}
                                               if cfg.pool is not None else {}),
                                            **({"ceremony_window": cfg.ceremony_window}
                                               if cfg.ceremony_window else {}),
                                            # a remote card through p11-kit-client.so: which server
                                            **({"p11_kit_server_address": os.environ["P11_KIT_SERVER_ADDRESS"]}
                                               if os.environ.get("P11_KIT_SERVER_ADDRESS") else {})},
                            error=self.boot_error)

    def load_backend(self) -> Backend:
        """At C_Initialize: open the configured backend once, and say which one in the log."""
        if self.base.backend is not None:
            return self.base.backend
        if self.boot_error:
            raise PKCS11Error(CKR.GENERAL_ERROR, f"configuration error: {self.boot_error}")
        if not self.config.backend:
            raise PKCS11Error(CKR.GENERAL_ERROR, "no backend: set SC4DNSSEC_BACKEND or 'backend' in SC4DNSSEC_CONF")
        try:
            backend = self.base.load(self.config.backend, self.config.mask_functions)
        except PKCS11Error as e:
            report(e.detail)
            raise
        self.auditor.record("backend", args=backend.identity())
        return backend


def locked_append_of(lib: Any, ffi: Any, path: str | None = None) -> Callable[[int, int, bytes, bool], int]:
    """The core's C append as the writer expects it; ``lib`` is the core (or, in the unit tests,
    the fake backend built with the core's audit_append.c) and ``path`` its file.

    cffi releases the GIL around every C call, so a record would hand the GIL over twice per
    PKCS#11 call (at the backend call and at the append): with several host threads each
    hand-off is a wake-up and a wait.  With ``path``, the append goes through ``ctypes.PyDLL``,
    which keeps the GIL, and asks for the file lock without waiting (``APPEND_NOWAIT``); only if
    another process holds the lock, or the record is to be fdatasynced, does it go through cffi
    and wait with the GIL released."""
    append = lib.sc4_audit_append
    held: Any = None
    if path is not None:
        held = ctypes.PyDLL(path, use_errno=True).sc4_audit_append
        held.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
        held.restype = ctypes.c_longlong

    def locked_append(fd: int, expected: int, line: bytes, sync: bool) -> int:
        if held is not None and not sync:
            size = held(fd, expected, line, len(line), APPEND_NOWAIT)
            if size == -1:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            if size != -3:
                return int(size)
        size = int(append(fd, expected, line, len(line), APPEND_SYNC if sync else 0))
        if size == -1:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        return size

    return locked_append


def _module_path(lib: Any) -> str:
    return os.path.abspath(cabi.ffi.string(lib.sc4_core_path()).decode())


SHIM: Shim | None = None


def boot(ffi: Any, lib: Any) -> None:
    """Called once by the core's embedding init code, before any C_* entry runs: compose the
    stack and bind each extern "Python" entry point of the core to its audit-layer entry."""
    global SHIM
    cabi.bind(ffi, lib)
    SHIM = Shim()
    for name, entry in SHIM.entries.items():
        ffi.def_extern(name=f"sc4py_{name}", error=int(CKR.GENERAL_ERROR))(entry)
