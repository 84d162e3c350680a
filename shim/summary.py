"""Audit summaries of call arguments, derived from the function table.

One rule set for all 68 functions, chosen by C type, so a new handler cannot
forget to summarise (or forget to hide) an argument.  PINs (every
``CK_UTF8CHAR_PTR`` except a token label) are never read; attribute values are
shown only for attributes on an allow-list of non-secret ones, others by
length.  Data that is signed, verified or digested is summarised as length and
SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from shim import attributes, cabi
from shim.constants import CKM, CKU, name_of
from shim.functions import FunctionSpec

Summariser = Callable[[tuple[Any, ...], dict[str, Any]], None]

# Functions whose input data is hashed into the record (what was signed/verified).
_HASHED_DATA = {
    "C_Sign", "C_SignUpdate", "C_Verify", "C_VerifyUpdate", "C_Digest", "C_DigestUpdate", "C_SignRecover",
}


_MECH_NAMES: dict[int, str] = {}


def _mech_name(m: int) -> str:
    """name_of(CKM, m), cached: C_SignInit names its mechanism on every signature."""
    name = _MECH_NAMES.get(m)
    if name is None:
        name = name_of(CKM, m)
        if len(_MECH_NAMES) < 1024:
            _MECH_NAMES[m] = name
    return name


def template_summary(ptr: Any, count: int) -> dict[str, Any] | str:
    if count == 0:
        return {}
    if ptr == cabi.NULL:
        return "NULL"
    if count > 256:
        return f"<{count} attributes>"
    out: dict[str, Any] = {}
    for i in range(count):
        a = ptr[i]
        value = None if a.pValue == cabi.NULL or a.ulValueLen > 1 << 20 else cabi.ffi.buffer(a.pValue, a.ulValueLen)[:]
        k, v = attributes.summarise(int(a.type), value)
        out[k] = v
    return out


def _mechanism(ptr: Any) -> str | None:
    return None if ptr == cabi.NULL else _mech_name(int(ptr.mechanism))


def _put(key: str, i: int, render: Callable[[Any], Any] = int) -> Summariser:
    def step(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        out[key] = render(args[i])

    return step


def _put_template(key: str, i: int) -> Summariser:
    def step(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        out[key] = template_summary(args[i], int(args[i + 1]))

    return step


def _put_length(key: str, i: int) -> Summariser:
    def step(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        out[key + "_len"] = int(args[i + 1])

    return step


def _put_hashed(key: str, i: int) -> Summariser:
    def step(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        _hashed(args, out, i, key)

    return step


def _lower_first(name: str, prefix: str) -> str:
    """``hObject`` -> ``object``, ``pPublicKeyTemplate`` -> ``publicKeyTemplate``."""
    return name[1:2].lower() + name[2:] if name.startswith(prefix) else name


def compile_summariser(spec: FunctionSpec) -> Summariser:
    steps: list[Summariser] = []
    params = spec.params
    for i, p in enumerate(params):
        nxt = params[i + 1] if i + 1 < len(params) else None
        counted = nxt is not None and nxt.ctype == "CK_ULONG"
        if p.ctype == "CK_SESSION_HANDLE":
            steps.append(_put("session", i))
        elif p.ctype == "CK_SLOT_ID":
            steps.append(_put("slot", i))
        elif p.ctype == "CK_OBJECT_HANDLE":
            steps.append(_put(_lower_first(p.name, "h"), i))
        elif p.ctype == "CK_MECHANISM_TYPE":
            steps.append(_put("mechanism", i, lambda v: name_of(CKM, int(v))))
        elif p.ctype == "CK_MECHANISM_PTR":
            steps.append(_put("mechanism", i, _mechanism))
        elif p.ctype == "CK_USER_TYPE":
            steps.append(_put("user", i, lambda v: name_of(CKU, int(v))))
        elif p.ctype == "CK_FLAGS":
            steps.append(_put("flags", i, lambda v: hex(int(v))))
        elif p.ctype == "CK_BBOOL":
            steps.append(_put(p.name, i, bool))
        elif p.ctype == "CK_ATTRIBUTE_PTR" and counted:
            steps.append(_put_template("template" if p.name == "pTemplate" else _lower_first(p.name, "p"), i))
        elif p.ctype == "CK_BYTE_PTR" and counted:
            key = _lower_first(p.name, "p")
            steps.append(_put_hashed(key, i) if spec.name in _HASHED_DATA and i == 1 else _put_length(key, i))
        elif p.name in ("ulMaxObjectCount", "ulRandomLen"):
            steps.append(_put(_lower_first(p.name[1:], "l"), i))
        # Everything else (PINs above all: CK_UTF8CHAR_PTR) is deliberately not summarised.

    def summarise(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        for step in steps:
            step(args, out)

    return summarise


def _hashed(args: tuple[Any, ...], out: dict[str, Any], i: int, key: str) -> None:
    ptr, n = args[i], int(args[i + 1])
    out[key + "_len"] = n
    if ptr != cabi.NULL and 0 < n <= 1 << 24:
        out[key + "_sha256"] = hashlib.sha256(cabi.ffi.buffer(ptr, n)).hexdigest()
