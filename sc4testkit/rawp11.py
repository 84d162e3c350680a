"""A ctypes view of a PKCS#11 module's C ABI, laid out from shim/functions.py.

For tests that must pass what no well-behaved binding would (NULL pointers,
odd lengths, init-args variants) or act like a C host.  Loaded in a child
process, never in the pytest process.  The structures are the probe's
(:mod:`shim.probe.p11`, the shim's own ctypes client): one layout of the ABI.
"""

from __future__ import annotations

import ctypes
from typing import Any

from shim.probe.p11 import (
    CK_ATTRIBUTE,
    CK_C_INITIALIZE_ARGS,
    CK_FUNCTION_LIST,
    CK_MECHANISM,
    CK_ULONG,
    CK_VERSION,
)

__all__ = ["CK_ATTRIBUTE", "CK_C_INITIALIZE_ARGS", "CK_FUNCTION_LIST", "CK_MECHANISM", "CK_ULONG", "CK_VERSION",
           "load"]


def load(path: str, mode: int = ctypes.RTLD_LOCAL) -> tuple[ctypes.CDLL, Any]:
    lib = ctypes.CDLL(path, mode=mode)
    fl = ctypes.POINTER(CK_FUNCTION_LIST)()
    rv = lib.C_GetFunctionList(ctypes.byref(fl))
    assert rv == 0, hex(rv)
    return lib, fl.contents
