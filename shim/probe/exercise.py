"""The probe's child process: load the shim like a consumer and try what consumers do.

Run as ``python -m shim.probe.exercise`` with one JSON request on stdin (module path, the PIN or
null, the mechanisms to try); one JSON answer on stdout.  It runs in its own process because the
shim embeds Python, reads its configuration and pcsc-lite's socket once per process, and a
backend that crashes must not take the probe's report with it.  It is also what runs as the
signer's user for ``--user``.

Nothing here is destructive: sessions objects only, no key generation, no token writes.  It logs
in at most once, on one token, and not at all when the token says the PIN is locked or on its
final try.  The PIN is never written anywhere.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import traceback
from typing import Any

from shim.constants import CKA, CKK, CKM, CKO, CKR, CKU, InitFlag, SessionFlag, TokenFlag, name_of
from shim.probe import p11
from shim.spec import DIGEST_INFO_PREFIX

_OBJECT_ATTRS = (CKA.CLASS, CKA.KEY_TYPE, CKA.ID, CKA.LABEL, CKA.TOKEN, CKA.PRIVATE)
_PUBLIC_ATTRS = (CKA.EC_PARAMS, CKA.EC_POINT, CKA.MODULUS, CKA.PUBLIC_EXPONENT)


def _ckm(name: str) -> int:
    return int(CKM[name.removeprefix("CKM_")])


def _rv(rv: int) -> str:
    return name_of(CKR, rv)


class Exercise:
    """The probe's operations; each sets ``m.tag`` so its calls can be found in the trace."""

    def __init__(self, module: p11.Module) -> None:
        self.m = module
        self.m.tag = "startup"

    @property
    def tag(self) -> str:
        return self.m.tag

    @tag.setter
    def tag(self, value: str) -> None:
        self.m.tag = value

    def call(self, name: str, *args: Any) -> int:
        return self.m.call(name, *args)

    # -- read-only discovery ----------------------------------------------------------
    def info(self) -> dict[str, Any]:
        info = p11.CK_INFO()
        rv = self.call("C_GetInfo", ctypes.byref(info))
        if rv != CKR.OK:
            return {"rv": _rv(rv)}
        return {"rv": "CKR_OK", "manufacturer": p11.text(info.manufacturerID),
                "description": p11.text(info.libraryDescription),
                "cryptoki": f"{info.cryptokiVersion.major}.{info.cryptokiVersion.minor}"}

    def slot(self, slot: int, extra_mechs: list[str]) -> dict[str, Any]:
        si = p11.CK_SLOT_INFO()
        rv = self.call("C_GetSlotInfo", slot, ctypes.byref(si))
        out: dict[str, Any] = {"id": slot, "rv": _rv(rv)}
        if rv != CKR.OK:
            return out
        out.update(description=p11.text(si.slotDescription), flags=int(si.flags))
        ti = p11.CK_TOKEN_INFO()
        rv = self.call("C_GetTokenInfo", slot, ctypes.byref(ti))
        out["token_rv"] = _rv(rv)
        if rv != CKR.OK:
            return out
        out["token"] = {"label": p11.text(ti.label), "manufacturer": p11.text(ti.manufacturerID),
                        "model": p11.text(ti.model), "serial": p11.text(ti.serialNumber), "flags": int(ti.flags)}
        rv, listed = self.m.mechanism_list(slot)
        out["mechanism_list_rv"] = _rv(rv)
        mechs: dict[str, Any] = {}
        names = [name_of(CKM, m) for m in listed]
        for name in names + [n for n in extra_mechs if n not in names]:
            try:
                mtype = _ckm(name) if name.startswith("CKM_") and not name.startswith("CKM_0x") else int(name[6:], 16)
            except (KeyError, ValueError):
                continue
            mi = p11.CK_MECHANISM_INFO()
            self.tag = f"mechanism {name}"
            rv = self.call("C_GetMechanismInfo", slot, mtype, ctypes.byref(mi))
            mechs[name] = {"listed": name in names, "rv": _rv(rv), "flags": int(mi.flags) if rv == CKR.OK else 0,
                           "min": int(mi.ulMinKeySize), "max": int(mi.ulMaxKeySize), "call": len(self.m.trace) - 1}
        self.tag = "startup"
        out["mechanisms"] = mechs
        return out

    def objects(self, session: int, logged_in: bool) -> list[dict[str, Any]]:
        self.tag = "objects"
        rv, handles = self.m.find(session, {})
        found = []
        for h in handles:
            obj: dict[str, Any] = {"handle": h}
            for a in _OBJECT_ATTRS:
                v = self.m.attribute(session, h, a)
                if v is not None:
                    obj[a.name] = v.hex()
            cls = int.from_bytes(bytes.fromhex(obj.get("CLASS", "")), "little") if "CLASS" in obj else -1
            wanted = _PUBLIC_ATTRS + ((CKA.VALUE,) if cls == CKO.CERTIFICATE else ())
            if cls == CKO.PRIVATE_KEY:
                wanted = (CKA.EC_PARAMS, CKA.ALWAYS_AUTHENTICATE)
            if cls in (CKO.PUBLIC_KEY, CKO.PRIVATE_KEY, CKO.CERTIFICATE):
                for a in wanted:
                    v = self.m.attribute(session, h, a)
                    if v is not None:
                        obj[a.name] = v.hex()
            obj["after_login"] = logged_in
            found.append(obj)
        return found

    # -- operations ---------------------------------------------------------------------
    def sign(self, session: int, key: int, mech: str, multipart: bool) -> tuple[str, bytes, bytes]:
        raw = mech in ("CKM_ECDSA", "CKM_RSA_PKCS")
        data = os.urandom(32)
        if mech == "CKM_RSA_PKCS":
            data = DIGEST_INFO_PREFIX["sha256"] + hashlib.sha256(data).digest()
        elif not raw:
            data = os.urandom(100)
        self.tag = f"sign {mech}" + (" multipart" if multipart else "")
        mm = p11.mechanism(_ckm(mech))
        rv = self.call("C_SignInit", session, ctypes.byref(mm), key)
        if rv != CKR.OK:
            return _rv(rv), data, b""
        if multipart:
            buf = ctypes.create_string_buffer(data, len(data))
            rv = self.call("C_SignUpdate", session, buf, len(data))
            if rv != CKR.OK:
                return _rv(rv), data, b""
            rv, sig = self.m.output("C_SignFinal", session)
        else:
            buf = ctypes.create_string_buffer(data, len(data))
            rv, sig = self.m.output("C_Sign", session, buf, len(data))
        return _rv(rv), data, sig

    def verify(self, session: int, key: int, mech: str, data: bytes, sig: bytes, multipart: bool) -> str:
        self.tag = f"verify {mech}" + (" multipart" if multipart else "")
        mm = p11.mechanism(_ckm(mech))
        rv = self.call("C_VerifyInit", session, ctypes.byref(mm), key)
        if rv != CKR.OK:
            return _rv(rv)
        d = ctypes.create_string_buffer(data, len(data))
        s = ctypes.create_string_buffer(sig, max(len(sig), 1))
        if multipart:
            rv = self.call("C_VerifyUpdate", session, d, len(data))
            if rv == CKR.OK:
                rv = self.call("C_VerifyFinal", session, s, len(sig))
        else:
            rv = self.call("C_Verify", session, d, len(data), s, len(sig))
        return _rv(rv)

    def digest(self, session: int, mech: str, multipart: bool) -> str:
        self.tag = f"digest {mech}" + (" multipart" if multipart else "")
        mm = p11.mechanism(_ckm(mech))
        rv = self.call("C_DigestInit", session, ctypes.byref(mm))
        if rv != CKR.OK:
            return _rv(rv)
        data = ctypes.create_string_buffer(b"probe" * 20, 100)
        if multipart:
            rv = self.call("C_DigestUpdate", session, data, 100)
            if rv != CKR.OK:
                return _rv(rv)
            rv, _ = self.m.output("C_DigestFinal", session)
        else:
            rv, _ = self.m.output("C_Digest", session, data, 100)
        return _rv(rv)

    def session_public_key(self, session: int, pub: dict[str, Any]) -> str:
        """BIND 9.16's self-check and OpenDNSSEC's SkipPublicKey: a session copy of a public key."""
        self.tag = "session public key"
        attrs: dict[int, bytes | bool | int] = {CKA.CLASS: int(CKO.PUBLIC_KEY), CKA.TOKEN: False,
                                               CKA.PRIVATE: False, CKA.VERIFY: True}
        if "EC_POINT" in pub and "EC_PARAMS" in pub:
            attrs.update({CKA.KEY_TYPE: int(CKK.EC), CKA.EC_PARAMS: bytes.fromhex(pub["EC_PARAMS"]),
                          CKA.EC_POINT: bytes.fromhex(pub["EC_POINT"])})
        elif "MODULUS" in pub and "PUBLIC_EXPONENT" in pub:
            attrs.update({CKA.KEY_TYPE: int(CKK.RSA), CKA.MODULUS: bytes.fromhex(pub["MODULUS"]),
                          CKA.PUBLIC_EXPONENT: bytes.fromhex(pub["PUBLIC_EXPONENT"])})
        else:
            return "no public key values"
        arr, keep = p11.template(attrs)
        h = p11.CK_ULONG(0)
        rv = self.call("C_CreateObject", session, arr, len(attrs), ctypes.byref(h))
        del keep
        if rv != CKR.OK:
            return _rv(rv)
        return _rv(self.call("C_DestroyObject", session, h.value))

    def random(self, session: int) -> str:
        self.tag = "random"
        buf = ctypes.create_string_buffer(16)
        return _rv(self.call("C_GenerateRandom", session, buf, 16))


def _class(obj: dict[str, Any]) -> int:
    return int.from_bytes(bytes.fromhex(obj.get("CLASS", "")), "little") if "CLASS" in obj else -1


def _key_type(obj: dict[str, Any]) -> str | None:
    kt = int.from_bytes(bytes.fromhex(obj.get("KEY_TYPE", "")), "little") if "KEY_TYPE" in obj else -1
    return {int(CKK.EC): "ec", int(CKK.RSA): "rsa"}.get(kt)


def _family(mech: str) -> str:
    return "ec" if "ECDSA" in mech else "rsa"


def run(req: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"slots": []}
    try:
        m = p11.Module(req["module"])
    except OSError as e:
        out["load_error"] = str(e)
        return out
    ex = Exercise(m)
    args = p11.CK_C_INITIALIZE_ARGS(None, None, None, None, int(InitFlag.OS_LOCKING_OK), None)
    rv = ex.call("C_Initialize", ctypes.byref(args))
    out["initialize"] = _rv(rv)
    if rv != CKR.OK:
        out["trace"] = _trace(ex)
        return out
    out["exports_get_interface"] = m.exports("C_GetInterface")
    out["info"] = ex.info()
    rv, all_slots = ex.m.slot_list(False)
    out["slot_list_rv"] = _rv(rv)
    rv, present = ex.m.slot_list(True)
    ops: dict[str, list[str]] = req.get("ops", {})
    for slot in all_slots:
        s = ex.slot(slot, list(req.get("mechanisms", [])))
        s["present"] = slot in present
        out["slots"].append(s)
    chosen = [s for s in out["slots"] if "token" in s and s["token"]["flags"] & TokenFlag.TOKEN_INITIALIZED
              and (not req.get("token") or s["token"]["label"] == req["token"])]
    out["chosen"] = chosen[0]["id"] if len(chosen) == 1 else None
    if out["chosen"] is not None:
        out["exercise"] = _exercise(ex, chosen[0], req.get("pin"), ops)
    ex.tag = "shutdown"
    ex.call("C_Finalize", None)
    out["trace"] = _trace(ex)
    return out


def _exercise(ex: Exercise, slot: dict[str, Any], pin: str | None, ops: dict[str, list[str]]) -> dict[str, Any]:
    res: dict[str, Any] = {"ops": []}
    sid = slot["id"]
    h = p11.CK_ULONG(0)
    ex.tag = "session"
    flags = int(SessionFlag.SERIAL_SESSION | SessionFlag.RW_SESSION)
    rv = ex.call("C_OpenSession", sid, flags, None, None, ctypes.byref(h))
    res["rw_session"] = _rv(rv)
    if rv != CKR.OK:
        rv = ex.call("C_OpenSession", sid, int(SessionFlag.SERIAL_SESSION), None, None, ctypes.byref(h))
        res["ro_session"] = _rv(rv)
        if rv != CKR.OK:
            return res
    session = h.value
    si = p11.CK_SESSION_INFO()
    res["session_info"] = _rv(ex.call("C_GetSessionInfo", session, ctypes.byref(si)))
    objects = ex.objects(session, False)
    tflags = int(slot["token"]["flags"])
    logged_in = False
    if pin is None:
        res["login"] = "no PIN given"
    elif tflags & (TokenFlag.USER_PIN_LOCKED | TokenFlag.USER_PIN_FINAL_TRY):
        res["login"] = "not tried: the token reports its user PIN " + (
            "locked" if tflags & TokenFlag.USER_PIN_LOCKED else "on its final try")
    else:
        ex.tag = "login"
        pin_bytes = pin.encode()
        buf = ctypes.create_string_buffer(pin_bytes, len(pin_bytes))
        rv = ex.call("C_Login", session, int(CKU.USER), buf, len(pin_bytes))
        ctypes.memset(buf, 0, len(pin_bytes))
        res["login"] = _rv(rv)
        logged_in = rv == CKR.OK
    if logged_in:
        objects = ex.objects(session, True)
    res["objects"] = objects
    privs: dict[str, dict[str, Any]] = {}
    # One key per type; one that needs a context-specific login per signature (PIV 9C) last.
    for o in sorted(objects, key=lambda o: o.get("ALWAYS_AUTHENTICATE") == "01"):
        kt = _key_type(o)
        if _class(o) == CKO.PRIVATE_KEY and kt and kt not in privs:
            privs[kt] = o
    pubs = {o.get("ID"): o for o in objects if _class(o) == CKO.PUBLIC_KEY}
    for mech in ops.get("digest", []):
        for multipart in (False, True):
            res["ops"].append({"op": "digest", "mechanism": mech, "multipart": multipart,
                               "rv": ex.digest(session, mech, multipart)})
    res["random"] = ex.random(session)
    for kt, pub in ((k, pubs.get(p.get("ID"))) for k, p in privs.items()):
        if pub is not None:
            res["ops"].append({"op": "session_public_key", "key": kt, "rv": ex.session_public_key(session, pub)})
    if logged_in:
        verify_mechs = set(ops.get("verify", []))
        for mech in ops.get("sign", []):
            kt = _family(mech)
            priv = privs.get(kt)
            if priv is None:
                continue
            pub = pubs.get(priv.get("ID"))
            for multipart in (False, True) if mech not in ("CKM_ECDSA", "CKM_RSA_PKCS") else (False,):
                rv_s, data, sig = ex.sign(session, priv["handle"], mech, multipart)
                res["ops"].append({"op": "sign", "mechanism": mech, "key": kt, "multipart": multipart, "rv": rv_s})
                if rv_s == "CKR_OK" and pub is not None and mech in verify_mechs:
                    res["ops"].append({"op": "verify", "mechanism": mech, "key": kt, "multipart": multipart,
                                       "rv": ex.verify(session, pub["handle"], mech, data, sig, multipart)})
        ex.tag = "logout"
        res["logout"] = _rv(ex.call("C_Logout", session))
    ex.tag = "session"
    res["close"] = _rv(ex.call("C_CloseSession", session))
    return res


def _trace(ex: Exercise) -> list[list[Any]]:
    return [[fn, _rv(rv), tag] for fn, rv, tag in ex.m.trace]


def main() -> int:
    req = json.loads(sys.stdin.readline())
    try:
        out = run(req)
    except Exception as e:  # noqa: BLE001 - the parent reports it; the message may quote the PIN
        where = traceback.extract_tb(e.__traceback__)[-1]
        out = {"error": f"{type(e).__name__} at {os.path.basename(where.filename)}:{where.lineno}"}
    req.pop("pin", None)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip atexit in the embedded interpreter: the shim is finalised already


if __name__ == "__main__":
    sys.exit(main())
