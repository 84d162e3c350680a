"""C_GenerateRandom / C_SeedRandom: card RNG (when present) mixed with the OS CSPRNG."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shim.constants import CKR
from shim.dispatch import Call, handles
from shim.errors import PKCS11Error
from shim.ffi import NULL, ffi
from shim.handlers.sessions import session_state
from shim.soft.random import mix

if TYPE_CHECKING:
    from shim.runtime import Shim

_NO_CARD_RNG = (CKR.FUNCTION_NOT_SUPPORTED, CKR.RANDOM_NO_RNG)


@handles("C_GenerateRandom")
def generate_random(shim: Shim, call: Call, h: int, pout: Any, n: int) -> int:
    session_state(shim, h)
    if n and pout == NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL output buffer")
    caps = shim.soft.caps
    card_bytes = None
    if n and not caps.lacks("C_GenerateRandom"):
        buf = ffi.new("CK_BYTE[]", n)
        rv = int(shim.backend.fn["C_GenerateRandom"](h, buf, n))
        if rv == CKR.OK:
            card_bytes = ffi.buffer(buf, n)[:]
        elif rv in _NO_CARD_RNG:
            caps.remember_missing("C_GenerateRandom")
        else:
            return rv
    out = mix(card_bytes, int(n))
    if n:
        ffi.memmove(pout, out, n)
    call.src = "soft"
    call.args["card_rng"] = card_bytes is not None
    return CKR.OK


@handles("C_SeedRandom")
def seed_random(shim: Shim, call: Call, h: int, pseed: Any, n: int) -> int:
    session_state(shim, h)
    caps = shim.soft.caps
    if not caps.lacks("C_SeedRandom"):
        rv = int(shim.backend.fn["C_SeedRandom"](h, pseed, n))
        if rv in (CKR.FUNCTION_NOT_SUPPORTED, CKR.RANDOM_SEED_NOT_SUPPORTED, CKR.RANDOM_NO_RNG):
            caps.remember_missing("C_SeedRandom")
        elif rv != CKR.OK:
            return rv
    call.args["card_seeded"] = not caps.lacks("C_SeedRandom")
    return CKR.OK
