"""A ctypes view of a PKCS#11 module's C ABI, generated from shim/functions.py.

For tests that must pass what no well-behaved binding would (NULL pointers,
odd lengths, init-args variants) or act like a C host.  Loaded in a child
process, never in the pytest process."""

from __future__ import annotations

import ctypes
from typing import Any

from shim.functions import FUNCTIONS, FunctionSpec

CK_ULONG = ctypes.c_ulong


def _ctype(name: str) -> Any:
    if name == "CK_BBOOL":
        return ctypes.c_ubyte
    if name.endswith("_PTR") or name.endswith("_PTR_PTR") or name in ("CK_NOTIFY",):
        return ctypes.c_void_p
    return CK_ULONG


def _prototype(spec: FunctionSpec) -> Any:
    return ctypes.CFUNCTYPE(CK_ULONG, *[_ctype(p.ctype) for p in spec.params])


class CK_VERSION(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class CK_FUNCTION_LIST(ctypes.Structure):
    _fields_ = [("version", CK_VERSION)] + [(f.name, _prototype(f)) for f in FUNCTIONS]


class CK_C_INITIALIZE_ARGS(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p), ("UnlockMutex", ctypes.c_void_p),
                ("flags", CK_ULONG), ("pReserved", ctypes.c_void_p)]


class CK_ATTRIBUTE(ctypes.Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", CK_ULONG)]


class CK_MECHANISM(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", CK_ULONG)]


def load(path: str, mode: int = ctypes.RTLD_LOCAL) -> tuple[ctypes.CDLL, Any]:
    lib = ctypes.CDLL(path, mode=mode)
    fl = ctypes.POINTER(CK_FUNCTION_LIST)()
    rv = lib.C_GetFunctionList(ctypes.byref(fl))
    assert rv == 0, hex(rv)
    return lib, fl.contents
