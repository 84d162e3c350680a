"""The cffi objects the core works with: handed in, never imported.

Inside the module, the embedding init code passes the core's own ``ffi`` and
``lib`` to :func:`shim.runtime.boot`; a unit test passes an ABI-mode ``ffi``
over the same declarations and a stand-in ``lib``.  Modules read them as
attributes of this module at call time (``cabi.ffi.new(...)``), so importing the
core never needs the compiled module.
"""

from __future__ import annotations

from typing import Any

#: Flags of the core's ``sc4_audit_append`` (shim/c/audit_append.c; shim/_build.py generates
#: their C definitions from these).
APPEND_SYNC = 1  # fdatasync before the file lock is released
APPEND_NOWAIT = 2  # the caller keeps the GIL: never wait for another process's lock (answer -3)

ffi: Any = None
lib: Any = None
NULL: Any = None


def bind(ffi_: Any, lib_: Any) -> None:
    """Make ``ffi_`` and ``lib_`` the objects every module of the core uses."""
    global ffi, lib, NULL
    ffi, lib, NULL = ffi_, lib_, ffi_.NULL
