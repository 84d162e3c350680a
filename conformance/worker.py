"""A child process that loads one PKCS#11 module and replays steps on request.

The module (the shim, or the card's own module for direct comparison) never lives in the pytest
process: the shim embeds Python, and a crash must fail a test, not the session.  Protocol: one
JSON object per line on stdin, one reply per line on stdout.

Calls go through PyKCS11's low-level API; ``sc4testkit/rawp11.py`` (ctypes) covers what PyKCS11
cannot express: C_CopyObject, C_GetInterface, mechanism parameters (PowerDNS's uninitialised
C_DigestInit parameter).  Both see the same dlopen'ed module, so handles are shared.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import PyKCS11
from PyKCS11 import LowLevel as L

from conformance.values import const, encode_attr, placeholder, sized
from sc4testkit import rawp11
from sc4testkit.quirks import BEHAVIOURS
from shim.constants import CKR

_OUT_SYMBOLS = ("opened", "object", "copy", "publicKey", "privateKey")
_VERIFY_ENDS = frozenset({"C_Verify", "C_VerifyFinal"})


@dataclass
class Context:
    """Per sequence context (one per thread): symbol -> handle, last digest/signature."""

    handles: dict[str, int] = field(default_factory=dict)
    last: dict[str, bytes] = field(default_factory=dict)
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)


class Runner:
    def __init__(self, module: str) -> None:
        self.lib = L.CPKCS11Lib()
        rv = self.lib.Load(module)  # PyKCS11 calls C_Initialize here ...
        if rv not in (0, True):
            raise RuntimeError(f"Load({module}) failed: {rv}")
        self.lib.C_Finalize()  # ... so sequences start from an uninitialised module
        self._raw_lib, self.raw = rawp11.load(module)
        self.contexts: dict[str, Context] = {}
        self.bindings: dict[str, Any] = {}
        self.lock = threading.Lock()
        # sc4testkit.quirks behaviours of the loaded module that this worker steps around (the
        # direct worker only: through the shim every call is made)
        self.avoid: dict[str, str] = {}
        self.verifying: set[int] = set()  # sessions with an active verify operation

    # -- binding -------------------------------------------------------------
    def ctx(self, name: str) -> Context:
        with self.lock:
            return self.contexts.setdefault(name, Context())

    def handle(self, c: Context, value: Any) -> int:
        if isinstance(value, int):
            return value
        if value == "$slot":
            return int(self.bindings["slot"])
        if isinstance(value, str) and value.startswith("$") and not value.startswith("${"):
            if value not in c.handles:
                raise KeyError(f"unbound handle {value}")
            return c.handles[value]
        raise ValueError(f"not a handle: {value!r}")

    def data(self, c: Context, args: dict[str, Any], key: str = "data") -> bytes:
        v = args.get(key)
        name = placeholder(v)
        if name in ("digest", "sig", "random"):
            return c.last[name]
        if name is not None:
            return bytes.fromhex(self.bindings[name])
        if isinstance(v, str) and v.startswith("hex:"):
            return bytes.fromhex(v[4:])
        if v is None and f"{key}_len" in args:
            return bytes(int(args[f"{key}_len"]))
        if v is None and key == "data" and "part_len" in args:  # Update calls, as the audit log names them
            return bytes(int(args["part_len"]))
        raise ValueError(f"no {key} in {args}")

    def template(self, tmpl: dict[str, Any], c: Context | None = None) -> Any:
        bindings = {**self.bindings, **({k: v.hex() for k, v in c.last.items()} if c else {})}
        t = L.ckattrlist(len(tmpl))
        for i, (name, value) in enumerate(tmpl.items()):
            atype = const(name)
            raw = encode_attr(atype, value, bindings)
            if raw is None:
                t[i].SetType(atype)
            else:
                t[i].SetBin(atype, L.ckbytelist(raw))
        return t

    def raw_template(self, tmpl: dict[str, Any]) -> tuple[Any, list[Any]]:
        arr = (rawp11.CK_ATTRIBUTE * max(1, len(tmpl)))()
        keep: list[Any] = []
        for i, (name, value) in enumerate(tmpl.items()):
            raw = encode_attr(const(name), value, self.bindings) or b""
            buf = ctypes.create_string_buffer(raw, len(raw))
            keep.append(buf)
            arr[i].type, arr[i].pValue, arr[i].ulValueLen = const(name), ctypes.addressof(buf), len(raw)
        return arr, keep

    @staticmethod
    def session(h: int) -> Any:
        s = L.CK_SESSION_HANDLE()
        s.assign(h)
        return s

    @staticmethod
    def obj(h: int) -> Any:
        o = L.CK_OBJECT_HANDLE()
        o.assign(h)
        return o

    @staticmethod
    def buffer(args: dict[str, Any], key: str) -> Any:
        """Output buffer: absent/``null`` -> NULL (a size query); a number -> that many bytes."""
        n = args.get(f"{key}_len")
        return L.ckbytelist() if n in (None, "null") else L.ckbytelist(bytes(int(n)))

    # -- one step ------------------------------------------------------------
    def hazard(self, c: Context, fn: str, args: dict[str, Any]) -> str | None:
        """Why this call is not made (a named behaviour of the module would meet it), or None."""
        why = self.avoid.get("verify_without_init")
        if why and fn in _VERIFY_ENDS | {"C_VerifyUpdate"} and self.handle(c, args["session"]) not in self.verifying:
            return why
        return None

    def _track(self, c: Context, fn: str, args: dict[str, Any], rv: int) -> None:
        if fn in ("C_Finalize", "C_Initialize", "C_CloseAllSessions"):
            self.verifying.clear()
        elif fn == "C_VerifyInit" and rv == CKR.OK:
            self.verifying.add(self.handle(c, args["session"]))
        elif fn in _VERIFY_ENDS or fn == "C_CloseSession" or (fn == "C_VerifyUpdate" and rv != CKR.OK):
            self.verifying.discard(self.handle(c, args["session"]))

    def step(self, c: Context, fn: str, args: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        why = self.hazard(c, fn, args)
        if why is not None:
            return {"rv": None, "out": {}, "error": f"not called (sc4testkit.quirks): {why}"}
        rv = self._call(c, fn, args, out)
        self._track(c, fn, args, int(rv))
        if rv == CKR.OK:
            for key in _OUT_SYMBOLS:
                sym = args.get(key)
                if isinstance(sym, str) and sym.startswith("$") and key in out and sym not in c.handles:
                    c.handles[sym] = out[key]
            if isinstance(args.get("found"), list):
                for sym, h in zip(args["found"], out.get("found", []), strict=False):
                    if isinstance(sym, str) and sym.startswith("$"):
                        c.handles[sym] = h
        return {"rv": int(rv), "out": out}

    def _call(self, c: Context, fn: str, a: dict[str, Any], out: dict[str, Any]) -> int:  # noqa: C901
        lib = self.lib
        s = self.session(self.handle(c, a["session"])) if "session" in a else None
        if fn == "C_Initialize":
            return int(lib.C_Initialize())
        if fn == "C_Finalize":
            return int(lib.C_Finalize())
        if fn == "C_GetInfo":
            return int(lib.C_GetInfo(L.CK_INFO()))
        if fn == "C_GetInterface":
            if not hasattr(self._raw_lib, "C_GetInterface"):
                return int(CKR.FUNCTION_NOT_SUPPORTED)
            p = ctypes.c_void_p()
            f = self._raw_lib.C_GetInterface
            f.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong]
            return int(f(b"PKCS 11", None, ctypes.byref(p), 0))
        if fn == "C_GetSlotList":
            sl = L.ckulonglist()
            rv = lib.C_GetSlotList(1 if a.get("tokenPresent") else 0, sl)
            out["slots"] = list(sl)
            return int(rv)
        if fn in ("C_GetSlotInfo", "C_GetTokenInfo"):
            info = L.CK_SLOT_INFO() if fn == "C_GetSlotInfo" else L.CK_TOKEN_INFO()
            rv = getattr(lib, fn)(self.handle(c, a["slot"]), info)
            out["flags"] = int(info.flags)
            if fn == "C_GetTokenInfo" and rv == CKR.OK:
                out["label"] = info.GetLabel().strip()
            return int(rv)
        if fn == "C_GetMechanismList":
            ml = L.ckulonglist()
            rv = lib.C_GetMechanismList(self.handle(c, a["slot"]), ml)
            out["mechanisms"] = list(ml)
            return int(rv)
        if fn == "C_GetMechanismInfo":
            mi = L.CK_MECHANISM_INFO()
            rv = lib.C_GetMechanismInfo(self.handle(c, a["slot"]), const(a["mechanism"]), mi)
            out["flags"] = int(mi.flags)
            return int(rv)
        if fn == "C_OpenSession":
            h = L.CK_SESSION_HANDLE()
            rv = lib.C_OpenSession(self.handle(c, a["slot"]), int(str(a.get("flags", "0x4")), 16), h)
            if rv == CKR.OK:
                out["opened"] = int(h.value())
            return int(rv)
        if fn == "C_CloseAllSessions":
            return int(lib.C_CloseAllSessions(self.handle(c, a["slot"])))
        if fn == "C_CloseSession":
            return int(lib.C_CloseSession(s))
        if fn == "C_GetSessionInfo":
            si = L.CK_SESSION_INFO()
            rv = lib.C_GetSessionInfo(s, si)
            if rv == CKR.OK:
                out["state"], out["flags"] = int(si.state), int(si.flags)
            return int(rv)
        if fn == "C_Login":
            pin = a.get("pin", "${pin}")
            pin = self.bindings["pin"] if pin == "${pin}" else pin
            return int(lib.C_Login(s, const(a.get("user", "CKU_USER")), L.ckbytelist(pin.encode())))
        if fn == "C_Logout":
            return int(lib.C_Logout(s))
        if fn == "C_FindObjectsInit":
            return int(lib.C_FindObjectsInit(s, self.template(a.get("template") or {})))
        if fn == "C_FindObjects":
            ol = L.ckulonglist(int(a.get("maxObjectCount", 1)))
            rv = lib.C_FindObjects(s, ol)
            out["found"] = [int(x) for x in ol]
            return int(rv)
        if fn == "C_FindObjectsFinal":
            return int(lib.C_FindObjectsFinal(s))
        if fn == "C_GetAttributeValue":
            return self._get_attributes(c, s, a, out)
        if fn == "C_CreateObject":
            h = L.CK_OBJECT_HANDLE()
            rv = lib.C_CreateObject(s, self.template(a.get("template") or {}, c), h)
            if rv == CKR.OK:
                out["object"] = int(h.value())
            return int(rv)
        if fn == "C_CopyObject":
            arr, keep = self.raw_template(a.get("template") or {})
            new = ctypes.c_ulong()
            rv = self.raw.C_CopyObject(self.handle(c, a["session"]), self.handle(c, a["object"]),
                                       ctypes.addressof(arr), len(a.get("template") or {}), ctypes.addressof(new))
            del keep
            if rv == CKR.OK:
                out["copy"] = int(new.value)
            return int(rv)
        if fn == "C_DestroyObject":
            return int(lib.C_DestroyObject(s, self.obj(self.handle(c, a["object"]))))
        if fn in ("C_DigestInit", "C_SignInit", "C_VerifyInit"):
            mech = const(a["mechanism"])
            if a.get("parameter_garbage"):  # PowerDNS: uninitialised pParameter/ulParameterLen
                junk = ctypes.create_string_buffer(b"\xa5" * 16)
                m = rawp11.CK_MECHANISM(mech, ctypes.addressof(junk), 2147483648)
                f = getattr(self.raw, fn)
                sh = self.handle(c, a["session"])
                return int(f(sh, ctypes.addressof(m)) if fn == "C_DigestInit"
                           else f(sh, ctypes.addressof(m), self.handle(c, a["key"])))
            m = PyKCS11.Mechanism(mech, None).to_native()
            if fn == "C_DigestInit":
                return int(lib.C_DigestInit(s, m))
            return int(getattr(lib, fn)(s, m, self.obj(self.handle(c, a["key"]))))
        if fn in ("C_Digest", "C_Sign"):
            key = "digest" if fn == "C_Digest" else "signature"
            buf = self.buffer(a, key)
            rv = getattr(lib, fn)(s, L.ckbytelist(self.data(c, a)), buf)
            return self._output(c, rv, buf, key, a, out)
        if fn in ("C_DigestUpdate", "C_SignUpdate", "C_VerifyUpdate"):
            return int(getattr(lib, fn)(s, L.ckbytelist(self.data(c, a))))
        if fn in ("C_DigestFinal", "C_SignFinal"):
            key = "digest" if fn == "C_DigestFinal" else "signature"
            buf = self.buffer(a, key)
            rv = getattr(lib, fn)(s, buf)
            return self._output(c, rv, buf, key, a, out)
        if fn == "C_Verify":
            return int(lib.C_Verify(s, L.ckbytelist(self.data(c, a)), L.ckbytelist(self.data(c, a, "signature"))))
        if fn == "C_VerifyFinal":
            return int(lib.C_VerifyFinal(s, L.ckbytelist(self.data(c, a, "signature"))))
        if fn == "C_GetOperationState":  # pkcs11-provider asks whether an operation can be duplicated
            sh = self.handle(c, a["session"])
            n = ctypes.c_ulong(0)
            rv = self.raw.C_GetOperationState(sh, None, ctypes.byref(n))
            if rv == CKR.OK and n.value:
                state = ctypes.create_string_buffer(n.value)
                rv = self.raw.C_GetOperationState(sh, ctypes.addressof(state), ctypes.byref(n))
            return int(rv)
        if fn == "C_GenerateRandom":
            buf = L.ckbytelist(bytes(int(a.get("randomLen", 16))))
            rv = lib.C_GenerateRandom(s, buf)
            if rv == CKR.OK:
                c.last["random"] = bytes(buf)
                out["random_len"] = len(buf)
            return int(rv)
        if fn == "C_GenerateKeyPair":
            pub, priv = L.CK_OBJECT_HANDLE(), L.CK_OBJECT_HANDLE()
            m = PyKCS11.Mechanism(const(a["mechanism"]), None).to_native()
            rv = lib.C_GenerateKeyPair(s, m, self.template(a.get("publicKeyTemplate") or {}, c),
                                       self.template(a.get("privateKeyTemplate") or {}, c), pub, priv)
            if rv == CKR.OK:
                out["publicKey"], out["privateKey"] = int(pub.value()), int(priv.value())
            return int(rv)
        raise NotImplementedError(fn)

    def _output(self, c: Context, rv: int, buf: Any, key: str, a: dict[str, Any], out: dict[str, Any]) -> int:
        if rv == CKR.OK:
            value = bytes(buf)
            out[f"{key}_len"] = len(value)
            if a.get(f"{key}_len") not in (None, "null"):  # a real buffer: an output, not a size query
                out[key] = value.hex()
                c.last["digest" if key == "digest" else "sig"] = value
        return int(rv)

    def _get_attributes(self, c: Context, s: Any, a: dict[str, Any], out: dict[str, Any]) -> int:
        h = self.handle(c, a["object"])
        tmpl = a.get("template") or {}
        t = L.ckattrlist(len(tmpl))
        for i, (name, value) in enumerate(tmpl.items()):
            atype = const(name)
            if value is None:  # a size query
                t[i].SetType(atype)
                continue
            n = c.sizes.get((h, atype)) or sized(value) or (len(encode_attr(atype, value, self.bindings) or b"")
                                                             if not isinstance(value, str) or not value.startswith("$")
                                                             else 0) or 1024
            t[i].SetBin(atype, L.ckbytelist(bytes(n)))
        rv = int(self.lib.C_GetAttributeValue(s, self.obj(h), t))
        values: dict[str, Any] = {}
        for i, name in enumerate(tmpl):
            atype = const(name)
            n = int(t[i].GetLen())
            if tmpl[name] is None:
                values[name] = n if n < 1 << 62 else -1
                if n < 1 << 62:
                    c.sizes[(h, atype)] = n
            elif rv == CKR.OK or n < 1 << 62:
                values[name] = "hex:" + bytes(t[i].GetBin()).hex()
        out["values"] = values
        return rv


def serve() -> None:
    module = sys.argv[1]
    runner: Runner | None = None
    write_lock = threading.Lock()

    def reply(obj: dict[str, Any]) -> None:
        with write_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    for line in sys.stdin:
        req = json.loads(line)
        try:
            if runner is None:
                runner = Runner(module)
            op = req["op"]
            if op == "bind":
                runner.bindings.update(req["bindings"])
                reply({"ok": True})
            elif op == "reset":
                runner.contexts.clear()
                runner.verifying.clear()
                reply({"ok": True})
            elif op == "avoid":
                runner.avoid = {b.name: b.why for b in BEHAVIOURS if b.module == req["module"]}
                reply({"ok": True, "avoided": sorted(runner.avoid)})
            elif op == "run":
                reply({"ok": True, "results": run_steps(runner, req["steps"])})
            elif op == "threads":
                reply({"ok": True, "results": run_threads(runner, req["groups"])})
            elif op == "quit":
                reply({"ok": True})
                break
            else:
                reply({"ok": False, "error": f"unknown op {op}"})
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails
            reply({"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})


def run_steps(runner: Runner, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for st in steps:
        try:
            results.append(runner.step(runner.ctx(st.get("ctx", "main")), st["fn"], st.get("args") or {}))
        except (KeyError, ValueError) as e:  # an unbound handle: the step could not be expressed
            results.append({"rv": None, "out": {}, "error": f"{type(e).__name__}: {e}"})
    return results


def run_threads(runner: Runner, groups: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    results: list[list[dict[str, Any]]] = [[] for _ in groups]

    def work(i: int) -> None:
        results[i] = run_steps(runner, groups[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


if __name__ == "__main__":
    serve()
