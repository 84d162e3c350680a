"""Run one fuzz call list against a PKCS#11 module's C ABI (ctypes), in its own process.

``python fuzz_child.py MODULE CALLS.json RESULTS.jsonl``: executes every call of
CALLS.json in order and appends ``[index, fn, rv]`` to RESULTS.jsonl after each
(flushed), so the parent knows the last call that returned before a crash.

Argument encoding (JSON lists), resolved here to C values:
  ["u", n]            an integer (CK_ULONG, CK_BBOOL, CK_FLAGS, ...)
  ["sess", i] / ["obj", i] / ["slot", i]
                      the i-th (mod count) session/object/slot handle seen so far in this
                      run (a closed session or destroyed object stays in the list: stale)
  ["null"]            NULL
  ["bytes", hex]      pointer to a writable buffer holding these bytes
  ["out", n]          pointer to n zero bytes
  ["ulong", v]        pointer to one CK_ULONG holding v (in/out)
  ["handles", n]      pointer to n CK_ULONGs
  ["mech", type, p]   CK_MECHANISM; p = ["null", len] or ["bytes", hex, len]
  ["tmpl", [[type, v, len], ...]]  CK_ATTRIBUTE array; v = ["null"] or ["bytes", hex]
  ["initargs", flags, mutexes, reserved]  CK_C_INITIALIZE_ARGS (mutexes: 0 none,
                      1 all four, 2 only two; reserved: 0 NULL, 1 non-NULL)
  ["notify"]          a CK_NOTIFY callback that returns CKR_OK
The generator never claims a length longer than the memory behind a pointer: a C
callee may trust that, so violating it would test the caller, not the module.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any

from sc4testkit import rawp11
from shim.functions import BY_NAME

ULONG = ctypes.c_ulong
NOTIFY = ctypes.CFUNCTYPE(ULONG, ULONG, ULONG, ctypes.c_void_p)
MUTEX = ctypes.CFUNCTYPE(ULONG, ctypes.c_void_p)


@NOTIFY
def _notify(h: int, event: int, app: Any) -> int:
    return 0


@MUTEX
def _mutex(p: Any) -> int:
    return 0


class Run:
    def __init__(self) -> None:
        self.sessions: list[int] = []
        self.objects: list[int] = []
        self.slots: list[int] = []
        self.keep: list[Any] = []  # C memory alive until the call returns

    def ptr(self, obj: Any) -> int:
        self.keep.append(obj)
        return ctypes.addressof(obj)

    def resolve(self, a: list[Any]) -> Any:
        kind = a[0]
        if kind == "u":
            return a[1]
        if kind in ("sess", "obj", "slot"):
            pool = {"sess": self.sessions, "obj": self.objects, "slot": self.slots}[kind]
            return pool[a[1] % len(pool)] if pool else a[1]
        if kind == "null":
            return None
        if kind == "bytes":
            raw = bytes.fromhex(a[1])
            return self.ptr(ctypes.create_string_buffer(raw, max(len(raw), 1)))
        if kind == "out":
            return self.ptr(ctypes.create_string_buffer(max(a[1], 1)))
        if kind == "ulong":
            return self.ptr(ULONG(a[1]))
        if kind == "handles":
            return self.ptr((ULONG * max(a[1], 1))())
        if kind == "mech":
            m = rawp11.CK_MECHANISM(a[1], None, 0)
            p = a[2]
            if p[0] == "null":
                m.ulParameterLen = p[1]
            else:
                raw = bytes.fromhex(p[1])
                m.pParameter = self.ptr(ctypes.create_string_buffer(raw, max(len(raw), 1)))
                m.ulParameterLen = p[2]
            return self.ptr(m)
        if kind == "tmpl":
            arr = (rawp11.CK_ATTRIBUTE * max(len(a[1]), 1))()
            for i, (atype, v, length) in enumerate(a[1]):
                arr[i].type = atype
                arr[i].ulValueLen = length
                if v[0] == "bytes":
                    raw = bytes.fromhex(v[1])
                    arr[i].pValue = self.ptr(ctypes.create_string_buffer(raw, max(len(raw), 1)))
            return self.ptr(arr)
        if kind == "initargs":
            ia = rawp11.CK_C_INITIALIZE_ARGS()
            fn = ctypes.cast(_mutex, ctypes.c_void_p).value
            if a[2] == 1:
                ia.CreateMutex = ia.DestroyMutex = ia.LockMutex = ia.UnlockMutex = fn
            elif a[2] == 2:
                ia.CreateMutex = ia.LockMutex = fn
            ia.flags = a[1]
            if a[3]:
                ia.pReserved = self.ptr(ULONG(0))
            return self.ptr(ia)
        if kind == "notify":
            return ctypes.cast(_notify, ctypes.c_void_p).value
        raise ValueError(f"unknown argument kind {kind!r}")

    def learn(self, fn: str, args: list[list[Any]], cargs: list[Any], rv: int) -> None:
        """Remember handles the module handed out, for later ["sess"/"obj"/"slot", i] refs."""
        if rv != 0:
            return
        spec = BY_NAME[fn]

        def ulong_at(i: int) -> int | None:
            return None if cargs[i] is None else ULONG.from_address(cargs[i]).value

        for i, p in enumerate(spec.params):
            if cargs[i] is None:
                continue
            if p.ctype == "CK_SESSION_HANDLE_PTR":
                self.sessions.append(ulong_at(i) or 0)
            elif p.ctype == "CK_OBJECT_HANDLE_PTR" and fn != "C_FindObjects":
                self.objects.append(ulong_at(i) or 0)
        if fn == "C_FindObjects" and cargs[1] is not None and cargs[3] is not None:
            n = min(ulong_at(3) or 0, args[1][1] if args[1][0] == "handles" else 0)
            self.objects += list((ULONG * max(n, 1)).from_address(cargs[1]))[:n]
        if fn == "C_GetSlotList" and cargs[1] is not None and cargs[2] is not None:
            n = min(ulong_at(2) or 0, args[1][1] if args[1][0] == "handles" else 0)
            self.slots += list((ULONG * max(n, 1)).from_address(cargs[1]))[:n]


def main(module: str, calls_path: str, results_path: str) -> int:
    calls = json.loads(Path(calls_path).read_text())
    _, fl = rawp11.load(module)
    run = Run()
    with open(results_path, "a", buffering=1) as out:
        for i, (fn, args) in enumerate(calls):
            run.keep = []
            cargs = [run.resolve(a) for a in args]
            rv = getattr(fl, fn)(*cargs)
            out.write(json.dumps([i, fn, rv]) + "\n")
            run.learn(fn, args, cargs, rv)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
