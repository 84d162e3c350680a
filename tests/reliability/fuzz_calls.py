"""Hypothesis strategies for PKCS#11 call lists, derived from the signatures in shim.functions.

Every argument is chosen by its C type, pointer/length pairs jointly, so that
NULL pointers, zero/odd/huge lengths and counts, invalid and stale handles,
unknown mechanisms and attribute types, malformed templates and mechanism
parameters all occur — but never a length longer than the memory behind a
non-NULL pointer (see fuzz_child).  The encoding is fuzz_child's.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from sc4testkit import ulong
from shim.constants import CKA, CKM, CKO
from shim.functions import FUNCTIONS, FunctionSpec

HUGE = [2**32, 2**63, 2**64 - 1, 2**31 - 1, 0xFFFFFFFF]
U = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 0x80000000, *HUGE]), st.integers(0, 2**64 - 1))

# No RSA keygen beyond 1024 bits, no multi-megabyte lengths to allocate: fuzzing must stay fast.
MECHS = [CKM[n] for n in ("ECDSA", "ECDSA_SHA256", "ECDSA_SHA384", "RSA_PKCS", "RSA_PKCS_PSS", "SHA256_RSA_PKCS",
                          "SHA256_RSA_PKCS_PSS", "SHA_1", "SHA256", "SHA512", "SHA256_HMAC", "EC_KEY_PAIR_GEN",
                          "RSA_PKCS_KEY_PAIR_GEN", "AES_KEY_GEN", "GENERIC_SECRET_KEY_GEN", "AES_ECB", "AES_CBC",
                          "AES_CBC_PAD", "RSA_X_509")]
# Parameters holding pointers: random bytes there would be a wild pointer (a caller bug), so NULL only.
POINTER_PARAMS = [CKM[n] for n in ("RSA_PKCS_OAEP", "ECDH1_DERIVE", "AES_GCM")]
MECH_TYPE = st.one_of(st.sampled_from(MECHS + POINTER_PARAMS + [0x7FFFFFF0, 0x80001234, 2**64 - 1]), U)
ATTRS = [CKA[n] for n in ("CLASS", "KEY_TYPE", "LABEL", "ID", "VALUE", "TOKEN", "PRIVATE", "SENSITIVE", "SIGN",
                          "VERIFY", "ENCRYPT", "DECRYPT", "EXTRACTABLE", "EC_PARAMS", "EC_POINT", "MODULUS",
                          "MODULUS_BITS", "PUBLIC_EXPONENT", "VALUE_LEN", "MODIFIABLE", "DERIVE")]
ATTR_TYPE = st.one_of(st.sampled_from(ATTRS + [0x7FFF0001, 0x80000001, 2**64 - 1]), U)
ULONG_VALUES = [0, 1, 2, 3, 4, 16, 32, 512, 1024, 0x80000000, 2**64 - 1]
P256 = bytes.fromhex("06082a8648ce3d030107")


@st.composite
def attr_value(draw: Any, atype: int) -> bytes:
    if atype in (CKA.MODULUS_BITS, CKA.VALUE_LEN):  # bounded: a 16384-bit keygen would take minutes
        return ulong.encode(draw(st.sampled_from([0, 1, 16, 32, 512, 1024, 2**20, 2**64 - 1])))
    return draw(st.one_of(
        st.sampled_from([ulong.encode(v) for v in ULONG_VALUES] + [b"\x01", b"\x00", b"\x02", P256,
                                                           ulong.encode(int(CKO.SECRET_KEY))]),
        st.binary(max_size=40)))


@st.composite
def template(draw: Any, output: bool = False) -> list[Any]:
    """NULL (with any count) or an attribute array with count <= its length."""
    if draw(st.integers(0, 9)) == 0:
        return [["null"], ["u", draw(st.sampled_from([0, 1, 5, *HUGE]))]]
    attrs = []
    for _ in range(draw(st.integers(0, 6))):
        atype = draw(ATTR_TYPE)
        if draw(st.booleans()) and (output or draw(st.booleans())):
            # NULL pValue: a size query in C_GetAttributeValue; otherwise any claimed length
            attrs.append([atype, ["null"], draw(st.sampled_from([0, 0, 1, 8, *HUGE])) if output else 0])
        else:
            raw = draw(st.binary(min_size=0, max_size=64)) if output else draw(attr_value(atype))
            attrs.append([atype, ["bytes", raw.hex()], draw(st.integers(0, len(raw)))
                          if draw(st.integers(0, 3)) == 0 else len(raw)])
    count = len(attrs) if draw(st.integers(0, 4)) else draw(st.integers(0, len(attrs)))
    return [["tmpl", attrs], ["u", count]]


@st.composite
def mechanism(draw: Any) -> list[Any]:
    if draw(st.integers(0, 12)) == 0:
        return ["null"]
    mtype = draw(MECH_TYPE)
    if mtype in POINTER_PARAMS or draw(st.booleans()):
        return ["mech", mtype, ["null", draw(st.sampled_from([0, 0, 8, 24, *HUGE]))]]
    pss = b"".join(map(ulong.encode, (0x250, 2, 32)))  # a CK_RSA_PKCS_PSS_PARAMS
    raw = draw(st.one_of(st.binary(max_size=48), st.sampled_from([b"\0" * 16, pss])))
    return ["mech", mtype, ["bytes", raw.hex(), draw(st.integers(0, len(raw)))]]


def handle(kind: str) -> Any:
    """A handle seen in this run (live or stale), or a made-up one."""
    return st.one_of(st.tuples(st.just(kind), st.integers(0, 8)).map(list),
                     st.tuples(st.just("u"), st.sampled_from([0, 1, 2, 0xDEAD, *HUGE])).map(list))


@st.composite
def input_bytes(draw: Any) -> list[Any]:
    if draw(st.integers(0, 7)) == 0:
        return [["null"], ["u", draw(st.sampled_from([0, 1, 32, *HUGE]))]]
    raw = draw(st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"\0" * 32, b"\xff" * 64, b"\x01" * 256])))
    n = len(raw) if draw(st.integers(0, 3)) else draw(st.integers(0, len(raw)))
    return [["bytes", raw.hex()], ["u", n]]


@st.composite
def output_buffer(draw: Any, item: str = "out") -> list[Any]:
    """(buffer, length pointer): NULL buffer = size query; the length never exceeds the buffer."""
    size = draw(st.sampled_from([0, 1, 8, 64, 256, 1024]))
    buf = ["null"] if draw(st.integers(0, 3)) == 0 else [item, size]
    if draw(st.integers(0, 7)) == 0:
        return [buf, ["null"]]
    if buf[0] == "null":
        return [buf, ["ulong", draw(st.sampled_from([0, 8, *HUGE]))]]
    return [buf, ["ulong", draw(st.integers(0, size))]]


def _pin() -> Any:
    return st.one_of(st.just([["bytes", b"123456".hex()], ["u", 6]]),
                     st.just([["bytes", b"12345678".hex()], ["u", 8]]), input_bytes())


@st.composite
def call(draw: Any, spec: FunctionSpec) -> list[Any]:
    args: list[Any] = []
    params = spec.params
    i = 0
    while i < len(params):
        p = params[i]
        nxt = params[i + 1] if i + 1 < len(params) else None
        ct = p.ctype
        if ct == "CK_VOID_PTR" and p.name == "pInitArgs":
            args.append(draw(st.one_of(st.just(["null"]), st.tuples(
                st.just("initargs"), st.sampled_from([0, 1, 2, 3, 0xFF]), st.integers(0, 2),
                st.integers(0, 1)).map(list))))
        elif ct in ("CK_VOID_PTR",):
            args.append(draw(st.sampled_from([["null"], ["null"], ["bytes", "00" * 8]])))
        elif ct == "CK_NOTIFY":
            args.append(draw(st.sampled_from([["null"], ["notify"]])))
        elif ct == "CK_FUNCTION_LIST_PTR_PTR" or ct.endswith("_INFO_PTR"):
            args.append(draw(st.sampled_from([["null"], ["out", 512]])))
        elif ct in ("CK_SLOT_ID_PTR", "CK_MECHANISM_TYPE_PTR") and nxt and nxt.ctype == "CK_ULONG_PTR":
            args += draw(output_buffer("handles"))
            i += 1
        elif ct in ("CK_SESSION_HANDLE_PTR", "CK_OBJECT_HANDLE_PTR", "CK_SLOT_ID_PTR", "CK_ULONG_PTR") and (
                spec.name != "C_FindObjects"):
            args.append(draw(st.sampled_from([["null"], ["ulong", 0], ["ulong", 0]])))
        elif spec.name == "C_FindObjects" and ct == "CK_OBJECT_HANDLE_PTR":
            buf = draw(st.sampled_from([["null"], ["handles", 256], ["handles", 256]]))
            mx = draw(st.sampled_from([0, 1, 16, 256, *HUGE])) if buf[0] == "null" else draw(
                st.sampled_from([0, 1, 16, 256]))
            args += [buf, ["u", mx], draw(st.sampled_from([["null"], ["ulong", 0], ["ulong", 0]]))]
            i += 2
        elif ct == "CK_UTF8CHAR_PTR" and nxt is not None and nxt.ctype == "CK_ULONG":
            args += draw(_pin())
            i += 1
        elif ct == "CK_UTF8CHAR_PTR":  # a 32-byte token label
            args.append(draw(st.sampled_from([["null"], ["bytes", (b"fuzz" + b" " * 28).hex()]])))
        elif ct == "CK_BYTE_PTR" and nxt is not None and nxt.ctype == "CK_ULONG_PTR":
            args += draw(output_buffer())
            i += 1
        elif ct == "CK_BYTE_PTR" and nxt is not None and nxt.ctype == "CK_ULONG":
            args += draw(input_bytes())
            i += 1
        elif ct == "CK_ATTRIBUTE_PTR":
            args += draw(template(output=spec.name == "C_GetAttributeValue"))
            i += 1
        elif ct == "CK_MECHANISM_PTR":
            args.append(draw(mechanism()))
        elif ct == "CK_SESSION_HANDLE":
            args.append(draw(handle("sess")))
        elif ct == "CK_OBJECT_HANDLE":
            args.append(draw(handle("obj")))
        elif ct == "CK_SLOT_ID":
            args.append(draw(handle("slot")))
        elif ct == "CK_MECHANISM_TYPE":
            args.append(["u", draw(MECH_TYPE)])
        elif ct == "CK_USER_TYPE":
            args.append(["u", draw(st.sampled_from([0, 1, 1, 2, 3, 0x80000001, 2**64 - 1]))])
        elif ct == "CK_FLAGS" and spec.name == "C_WaitForSlotEvent":
            args.append(["u", 1])  # CKF_DONT_BLOCK: a blocking wait with no event never returns
        elif ct == "CK_FLAGS":
            args.append(["u", draw(st.sampled_from([0, 2, 4, 6, 6, 0xFFFF, 2**64 - 1]))])
        elif ct == "CK_BBOOL":
            args.append(["u", draw(st.sampled_from([0, 1, 2, 255]))])
        elif ct == "CK_ULONG":
            args.append(["u", draw(U)])
        else:
            raise AssertionError(f"no strategy for {spec.name} {ct} {p.name}")
        i += 1
    assert len(args) == len(params), (spec.name, args)
    return [spec.name, args]


FUZZED = [f for f in FUNCTIONS if f.name != "C_GetFunctionList"] + [f for f in FUNCTIONS if f.name in (
    "C_Sign", "C_SignInit", "C_GetAttributeValue", "C_FindObjectsInit", "C_FindObjects", "C_CreateObject",
    "C_OpenSession", "C_CloseSession", "C_DestroyObject", "C_Verify", "C_Digest")]
ANY_CALL = st.sampled_from(FUZZED).flatmap(call)


def prelude(depth: int, pin: str) -> list[list[Any]]:
    """Well-formed calls up to `depth`: 0 none, 1 C_Initialize, 2 + slot and session, 3 + login and find."""
    out: list[list[Any]] = []
    if depth >= 1:
        out.append(["C_Initialize", [["null"]]])
    if depth >= 2:
        out += [["C_GetSlotList", [["u", 1], ["handles", 8], ["ulong", 8]]],
                ["C_OpenSession", [["slot", 0], ["u", 6], ["null"], ["null"], ["ulong", 0]]]]
    if depth >= 3:
        out += [["C_Login", [["sess", 0], ["u", 1], ["bytes", pin.encode().hex()], ["u", len(pin)]]],
                ["C_FindObjectsInit", [["sess", 0], ["null"], ["u", 0]]],
                ["C_FindObjects", [["sess", 0], ["handles", 64], ["u", 64], ["ulong", 0]]],
                ["C_FindObjectsFinal", [["sess", 0]]]]
    return out


def call_lists(pin: str, max_calls: int) -> Any:
    return st.tuples(st.sampled_from([0, 1, 2, 3, 3, 3]), st.lists(ANY_CALL, min_size=8, max_size=max_calls)).map(
        lambda t: prelude(t[0], pin) + t[1])
