"""Audit summaries of call arguments, derived from the function table.

One rule set for all 68 functions, chosen by C type, so a new handler cannot
forget to summarise (or forget to hide) an argument.  PINs (every
``CK_UTF8CHAR_PTR`` except a token label) are never read; attribute values are
shown only for attributes on an allow-list of non-secret ones, others by
length, and no shown value is longer than :data:`MAX_SHOWN` bytes.  Data that
is signed, verified or digested is summarised as length and SHA-256.

Inputs are summarised before the call, outputs after it: an output buffer
holds whatever the host left in it (a reused buffer may hold the PIN) until the
callee writes it, so an output is read only where the callee says it wrote
(its return value, ``ulValueLen``, ``CK_UNAVAILABLE_INFORMATION``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from shim import attributes, cabi
from shim.constants import CK_UNAVAILABLE_INFORMATION, CKM, CKR, CKU, name_of
from shim.functions import FunctionSpec

Summariser = Callable[[tuple[Any, ...], dict[str, Any]], None]
OutputSummariser = Callable[[tuple[Any, ...], int, dict[str, Any]], None]

#: Attribute values longer than this are shown by length only (a label is at most 32 bytes on a
#: token; a DER public key a few hundred).
MAX_SHOWN = 1024
#: Templates whose values the callee writes (PKCS#11 v2.40 5.7: C_GetAttributeValue); every other
#: template is an input.
OUTPUT_TEMPLATES = frozenset({"C_GetAttributeValue"})
#: Return values after which C_GetAttributeValue has written every attribute of the template:
#: a value, or CK_UNAVAILABLE_INFORMATION in ulValueLen (v2.40 5.7, C_GetAttributeValue).  After
#: any other the template is as the host passed it, and nothing in it is the card's.
_WRITTEN_RVS = frozenset({CKR.OK, CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID, CKR.BUFFER_TOO_SMALL})

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
        k, v = _attribute(int(a.type), a.pValue, int(a.ulValueLen))
        out[k] = v
    return out


def _attribute(atype: int, p_value: Any, n: int) -> tuple[str, Any]:
    """One attribute as the record shows it: the value only if shown and within MAX_SHOWN."""
    if p_value == cabi.NULL:
        return attributes.summarise(atype, None)
    if n > MAX_SHOWN or atype in attributes.SECRET or not attributes.shown(atype):
        return attributes.name(atype), f"<{n} bytes>"
    return attributes.summarise(atype, cabi.ffi.buffer(p_value, n)[:])


def written_template_summary(ptr: Any, count: int, rv: int) -> dict[str, Any] | str:
    """An output template after the call: what the callee wrote, never what the host left there."""
    if count == 0:
        return {}
    if ptr == cabi.NULL:
        return "NULL"
    if count > 256:
        return f"<{count} attributes>"
    written = rv in _WRITTEN_RVS
    out: dict[str, Any] = {}
    for i in range(count):
        a = ptr[i]
        atype, n = int(a.type), int(a.ulValueLen)
        if not written:
            out[attributes.name(atype)] = None
        elif n == CK_UNAVAILABLE_INFORMATION:
            out[attributes.name(atype)] = "<unavailable>"
        elif a.pValue == cabi.NULL:  # a length query: the card wrote only the length
            out[attributes.name(atype)] = f"<{n} bytes>"
        else:
            k, v = _attribute(atype, a.pValue, n)
            out[k] = v
    return out


def _template_types(ptr: Any, count: int) -> list[str] | str:
    """An output template before the call: the attribute types asked for (inputs), no values."""
    if ptr == cabi.NULL:
        return "NULL" if count else []
    if count > 256:
        return f"<{count} attributes>"
    return [attributes.name(int(ptr[i].type)) for i in range(count)]


def _put(key: str, i: int, render: Callable[[Any], Any] = int) -> Summariser:
    def step(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        out[key] = render(args[i])

    return step


def _put_mechanism(key: str, i: int) -> Summariser:
    """The mechanism a CK_MECHANISM_PTR names (None for NULL), from the name cache (every C_SignInit)."""
    names = _MECH_NAMES

    def step(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        ptr = args[i]
        if ptr == cabi.NULL:
            out[key] = None
            return
        m = int(ptr.mechanism)
        name = names.get(m)
        out[key] = name if name is not None else _mech_name(m)

    return step


def _put_template(key: str, i: int) -> Summariser:
    def step(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        out[key] = template_summary(args[i], int(args[i + 1]))

    return step


def _put_types(key: str, i: int) -> Summariser:
    def step(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        out[key] = _template_types(args[i], int(args[i + 1]))

    return step


def _put_written_template(key: str, i: int) -> OutputSummariser:
    def step(args: tuple[Any, ...], rv: int, out: dict[str, Any]) -> None:
        out[key] = written_template_summary(args[i], int(args[i + 1]), rv)

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
    """The summary of the call's inputs, taken before the call."""
    return _compile(spec)[0]


def compile_output_summariser(spec: FunctionSpec) -> OutputSummariser | None:
    """The summary of what the callee wrote, taken after the call (None: the function has no
    output the record shows)."""
    return _compile(spec)[1]


def _compile(spec: FunctionSpec) -> tuple[Summariser, OutputSummariser | None]:
    steps: list[Summariser] = []
    after: list[OutputSummariser] = []
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
            steps.append(_put_mechanism("mechanism", i))
        elif p.ctype == "CK_USER_TYPE":
            steps.append(_put("user", i, lambda v: name_of(CKU, int(v))))
        elif p.ctype == "CK_FLAGS":
            steps.append(_put("flags", i, lambda v: hex(int(v))))
        elif p.ctype == "CK_BBOOL":
            steps.append(_put(p.name, i, bool))
        elif p.ctype == "CK_ATTRIBUTE_PTR" and counted and spec.name in OUTPUT_TEMPLATES:
            steps.append(_put_types("types", i))
            after.append(_put_written_template("template", i))
        elif p.ctype == "CK_ATTRIBUTE_PTR" and counted:
            steps.append(_put_template("template" if p.name == "pTemplate" else _lower_first(p.name, "p"), i))
        elif p.ctype == "CK_BYTE_PTR" and counted:
            key = _lower_first(p.name, "p")
            steps.append(_put_hashed(key, i) if spec.name in _HASHED_DATA and i == 1 else _put_length(key, i))
        elif p.name in ("ulMaxObjectCount", "ulRandomLen"):
            steps.append(_put(_lower_first(p.name[1:], "l"), i))
        # Everything else (PINs above all: CK_UTF8CHAR_PTR) is deliberately not summarised.

    def each(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        for step in steps:
            step(args, out)

    # Most functions summarise one argument (a session): that step is the summariser.
    summarise: Summariser = steps[0] if len(steps) == 1 else each

    def summarise_outputs(args: tuple[Any, ...], rv: int, out: dict[str, Any]) -> None:
        for step in after:
            step(args, rv, out)

    return summarise, summarise_outputs if after else None


def _hashed(args: tuple[Any, ...], out: dict[str, Any], i: int, key: str) -> None:
    ptr, n = args[i], int(args[i + 1])
    out[key + "_len"] = n
    if ptr != cabi.NULL and 0 < n <= 1 << 24:
        out[key + "_sha256"] = hashlib.sha256(cabi.ffi.buffer(ptr, n)).hexdigest()
