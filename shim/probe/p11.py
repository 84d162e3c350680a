"""A small ctypes client of a PKCS#11 module, laid out from ``shim.functions``.

The probe talks to the shim the way a C consumer does: dlopen, C_GetFunctionList, then calls
through the function list.  ctypes is in the standard library, so the probe needs nothing the
package does not already depend on.  Every call goes through :meth:`Module.call`, which keeps
the order of calls so the caller can pair them with the shim's audit records.
"""

from __future__ import annotations

import ctypes
from typing import Any

from shim.constants import CKA, CKR
from shim.functions import FUNCTIONS, FunctionSpec

CK_ULONG = ctypes.c_ulong
UNAVAILABLE = (1 << (ctypes.sizeof(CK_ULONG) * 8)) - 1  # CK_UNAVAILABLE_INFORMATION


def _ctype(name: str) -> Any:
    if name == "CK_BBOOL":
        return ctypes.c_ubyte
    if name.endswith("_PTR") or name == "CK_NOTIFY":
        return ctypes.c_void_p
    return CK_ULONG


def _prototype(spec: FunctionSpec) -> Any:
    return ctypes.CFUNCTYPE(CK_ULONG, *[_ctype(p.ctype) for p in spec.params])


class CK_VERSION(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class CK_FUNCTION_LIST(ctypes.Structure):
    _fields_ = [("version", CK_VERSION)] + [(f.name, _prototype(f)) for f in FUNCTIONS]


class CK_INFO(ctypes.Structure):
    _fields_ = [("cryptokiVersion", CK_VERSION), ("manufacturerID", ctypes.c_char * 32), ("flags", CK_ULONG),
                ("libraryDescription", ctypes.c_char * 32), ("libraryVersion", CK_VERSION)]


class CK_SLOT_INFO(ctypes.Structure):
    _fields_ = [("slotDescription", ctypes.c_char * 64), ("manufacturerID", ctypes.c_char * 32),
                ("flags", CK_ULONG), ("hardwareVersion", CK_VERSION), ("firmwareVersion", CK_VERSION)]


class CK_TOKEN_INFO(ctypes.Structure):
    _fields_ = [("label", ctypes.c_char * 32), ("manufacturerID", ctypes.c_char * 32),
                ("model", ctypes.c_char * 16), ("serialNumber", ctypes.c_char * 16), ("flags", CK_ULONG),
                *[(n, CK_ULONG) for n in ("ulMaxSessionCount", "ulSessionCount", "ulMaxRwSessionCount",
                                          "ulRwSessionCount", "ulMaxPinLen", "ulMinPinLen",
                                          "ulTotalPublicMemory", "ulFreePublicMemory",
                                          "ulTotalPrivateMemory", "ulFreePrivateMemory")],
                ("hardwareVersion", CK_VERSION), ("firmwareVersion", CK_VERSION), ("utcTime", ctypes.c_char * 16)]


class CK_MECHANISM_INFO(ctypes.Structure):
    _fields_ = [("ulMinKeySize", CK_ULONG), ("ulMaxKeySize", CK_ULONG), ("flags", CK_ULONG)]


class CK_SESSION_INFO(ctypes.Structure):
    _fields_ = [("slotID", CK_ULONG), ("state", CK_ULONG), ("flags", CK_ULONG), ("ulDeviceError", CK_ULONG)]


class CK_ATTRIBUTE(ctypes.Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", CK_ULONG)]


class CK_MECHANISM(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", ctypes.c_void_p), ("ulParameterLen", CK_ULONG)]


class CK_C_INITIALIZE_ARGS(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p), ("UnlockMutex", ctypes.c_void_p),
                ("flags", CK_ULONG), ("pReserved", ctypes.c_void_p)]


def text(field: bytes) -> str:
    return field.decode("utf-8", "replace").rstrip(" \x00")


def ulong_bytes(value: int) -> bytes:
    return int(value).to_bytes(ctypes.sizeof(CK_ULONG), "little")


def template(attrs: dict[int, bytes | bool | int]) -> tuple[Any, list[Any]]:
    """A CK_ATTRIBUTE array for ``attrs`` and the buffers it points into (keep them alive)."""
    arr = (CK_ATTRIBUTE * max(len(attrs), 1))()
    keep: list[Any] = []
    for i, (atype, value) in enumerate(attrs.items()):
        if isinstance(value, bool):
            raw = b"\x01" if value else b"\x00"
        elif isinstance(value, int):
            raw = ulong_bytes(value)
        else:
            raw = value
        buf = ctypes.create_string_buffer(raw, len(raw))
        keep.append(buf)
        arr[i].type, arr[i].pValue, arr[i].ulValueLen = int(atype), ctypes.cast(buf, ctypes.c_void_p), len(raw)
    return arr, keep


class Module:
    """A loaded PKCS#11 module; ``trace`` lists (function, CK_RV, tag) of every call in order,
    ``tag`` being what the caller said it was doing at the time."""

    def __init__(self, path: str) -> None:
        self._lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        fl = ctypes.POINTER(CK_FUNCTION_LIST)()
        rv = self._lib.C_GetFunctionList(ctypes.byref(fl))
        if rv != CKR.OK or not fl:
            raise OSError(f"C_GetFunctionList returned {rv:#x}")
        self.fl = fl.contents
        self.trace: list[tuple[str, int, str]] = []
        self.tag = ""

    def exports(self, symbol: str) -> bool:
        return hasattr(self._lib, symbol)

    def call(self, name: str, *args: Any) -> int:
        rv = int(getattr(self.fl, name)(*args))
        self.trace.append((name, rv, self.tag))
        return rv

    # -- helpers the probe uses -------------------------------------------------------
    def slot_list(self, present: bool) -> tuple[int, list[int]]:
        n = CK_ULONG(0)
        rv = self.call("C_GetSlotList", int(present), None, ctypes.byref(n))
        if rv != CKR.OK:
            return rv, []
        arr = (CK_ULONG * max(n.value, 1))()
        rv = self.call("C_GetSlotList", int(present), arr, ctypes.byref(n))
        return rv, [int(arr[i]) for i in range(n.value)] if rv == CKR.OK else []

    def mechanism_list(self, slot: int) -> tuple[int, list[int]]:
        n = CK_ULONG(0)
        rv = self.call("C_GetMechanismList", slot, None, ctypes.byref(n))
        if rv != CKR.OK:
            return rv, []
        arr = (CK_ULONG * max(n.value, 1))()
        rv = self.call("C_GetMechanismList", slot, arr, ctypes.byref(n))
        return rv, [int(arr[i]) for i in range(n.value)] if rv == CKR.OK else []

    def find(self, session: int, attrs: dict[int, bytes | bool | int]) -> tuple[int, list[int]]:
        arr, keep = template(attrs)
        rv = self.call("C_FindObjectsInit", session, arr if attrs else None, len(attrs))
        if rv != CKR.OK:
            return rv, []
        found: list[int] = []
        out = (CK_ULONG * 64)()
        n = CK_ULONG(0)
        while True:
            rv = self.call("C_FindObjects", session, out, 64, ctypes.byref(n))
            if rv != CKR.OK or n.value == 0 or len(found) > 4096:
                break
            found += [int(out[i]) for i in range(n.value)]
        final = self.call("C_FindObjectsFinal", session)
        del keep
        return rv if rv != CKR.OK else final, found

    def attribute(self, session: int, obj: int, atype: int) -> bytes | None:
        """One attribute, size query first (as every consumer does); None if the object has none."""
        attr = CK_ATTRIBUTE(int(atype), None, 0)
        rv = self.call("C_GetAttributeValue", session, obj, ctypes.byref(attr), 1)
        if rv != CKR.OK or attr.ulValueLen == UNAVAILABLE:
            return None
        buf = ctypes.create_string_buffer(max(int(attr.ulValueLen), 1))
        attr.pValue = ctypes.cast(buf, ctypes.c_void_p)
        rv = self.call("C_GetAttributeValue", session, obj, ctypes.byref(attr), 1)
        if rv != CKR.OK:
            return None
        return buf.raw[: attr.ulValueLen]

    def output(self, name: str, session: int, *head: Any) -> tuple[int, bytes]:
        """A call ending in (pOut, pulOutLen): length query with a NULL buffer, then the value."""
        n = CK_ULONG(0)
        rv = self.call(name, session, *head, None, ctypes.byref(n))
        if rv != CKR.OK:
            return rv, b""
        buf = ctypes.create_string_buffer(max(n.value, 1))
        rv = self.call(name, session, *head, buf, ctypes.byref(n))
        return rv, buf.raw[: n.value] if rv == CKR.OK else b""


def mechanism(mech: int) -> CK_MECHANISM:
    return CK_MECHANISM(int(mech), None, 0)


ATTR_NAMES = {int(a): a.name for a in CKA}
