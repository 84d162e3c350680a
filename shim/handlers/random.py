"""C_GenerateRandom / C_SeedRandom: card RNG (when present) mixed with the OS CSPRNG."""

from __future__ import annotations

from typing import Any

from shim import cabi
from shim.call import Call
from shim.constants import CKR
from shim.errors import PKCS11Error
from shim.handlers.sessions import require_session
from shim.soft.random import mix
from shim.soft.state import CompletionState

_NO_CARD_RNG = (CKR.FUNCTION_NOT_SUPPORTED, CKR.RANDOM_NO_RNG)


def generate_random(st: CompletionState, call: Call, h: int, pout: Any, n: int) -> int:
    require_session(st, h)
    if n and pout == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL output buffer")
    caps = st.caps
    card_bytes = None
    if n and not caps.lacks("C_GenerateRandom"):
        buf = cabi.ffi.new("CK_BYTE[]", n)
        rv = int(st.card["C_GenerateRandom"](h, buf, n))
        if rv == CKR.OK:
            card_bytes = cabi.ffi.buffer(buf, n)[:]
        elif rv in _NO_CARD_RNG:
            caps.remember_missing("C_GenerateRandom")
        else:
            return rv
    out = mix(card_bytes, int(n))
    if n:
        cabi.ffi.memmove(pout, out, n)
    call.src = "soft"
    call.args["card_rng"] = card_bytes is not None
    return CKR.OK


def seed_random(st: CompletionState, call: Call, h: int, pseed: Any, n: int) -> int:
    require_session(st, h)
    caps = st.caps
    if not caps.lacks("C_SeedRandom"):
        rv = int(st.card["C_SeedRandom"](h, pseed, n))
        if rv in (CKR.FUNCTION_NOT_SUPPORTED, CKR.RANDOM_SEED_NOT_SUPPORTED, CKR.RANDOM_NO_RNG):
            caps.remember_missing("C_SeedRandom")
        elif rv != CKR.OK:
            return rv
    call.args["card_seeded"] = not caps.lacks("C_SeedRandom")
    return CKR.OK
