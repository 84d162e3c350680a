"""The one dispatch table: PKCS#11 function name -> Python handler.

p11-kit's shape: every function forwards to the backend by default; handler
modules override the functions they complete or watch.  A handler is called
as ``handler(shim, call, *c_args)`` with the raw cffi arguments and returns a
CK_RV; it may raise :class:`~shim.errors.PKCS11Error`.  The entry wrapper
around it guarantees, for every call: a summary of the arguments, the
not-initialised and policy checks, exception -> CKR mapping (never CKR_OK,
never an escaping exception), and exactly one audit record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shim.constants import CKR
from shim.errors import PKCS11Error
from shim.functions import C_ONLY, FUNCTIONS
from shim.summary import compile_summariser

if TYPE_CHECKING:
    from shim.runtime import Shim

Handler = Callable[..., int]
HANDLERS: dict[str, Handler] = {}

# Allowed before C_Initialize (C_GetFunctionList is answered in C).
_BEFORE_INIT = frozenset({"C_Initialize"})

# PKCS#11 v2.40 lets functions that take a key handle report a bad one only as
# CKR_KEY_HANDLE_INVALID (or the wrapping/unwrapping variant); SoftHSM answers
# CKR_OBJECT_HANDLE_INVALID, which C_SignInit's callers need not expect.
_KEY_HANDLE_FNS = ("C_EncryptInit", "C_DecryptInit", "C_DigestKey", "C_SignInit", "C_SignRecoverInit",
                   "C_VerifyInit", "C_VerifyRecoverInit", "C_WrapKey", "C_DeriveKey")
_SPEC_RV: dict[str, dict[int, int]] = {
    **{fn: {CKR.OBJECT_HANDLE_INVALID: CKR.KEY_HANDLE_INVALID} for fn in _KEY_HANDLE_FNS},
    "C_UnwrapKey": {CKR.OBJECT_HANDLE_INVALID: CKR.UNWRAPPING_KEY_HANDLE_INVALID},
}


class Call:
    """What one PKCS#11 call did, as the audit record will say it."""

    __slots__ = ("fn", "args", "src", "error")

    def __init__(self, fn: str) -> None:
        self.fn = fn
        self.args: dict[str, Any] = {}
        self.src: str | None = None  # "card" | "soft": who produced a cryptographic result
        self.error: str | None = None


def handles(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            if name in HANDLERS:
                raise RuntimeError(f"two handlers for {name}")
            HANDLERS[name] = fn
        return fn

    return register


def forward(name: str) -> Handler:
    """The default handler: pass the raw arguments to the backend unchanged."""

    def handler(shim: Shim, call: Call, *args: Any) -> int:
        return int(shim.backend.fn[name](*args))

    handler.__name__ = f"forward_{name}"
    return handler


def make_entry(shim: Shim, name: str, handler: Handler) -> Callable[..., int]:
    summarise = compile_summariser(next(f for f in FUNCTIONS if f.name == name))
    needs_init = name not in _BEFORE_INIT
    spec_rv = _SPEC_RV.get(name)
    perf = time.perf_counter_ns

    def entry(*args: Any) -> int:
        t0 = perf()
        call = Call(name)
        rv: int
        try:
            summarise(args, call.args)
            if shim.fork_generation_changed():
                shim.after_fork()
            if needs_init and not shim.initialized:
                rv = CKR.CRYPTOKI_NOT_INITIALIZED
            elif shim.denied(name):
                rv = CKR.ACTION_PROHIBITED
                call.error = "denied by [policy] allow_functions"
            else:
                rv = handler(shim, call, *args)
        except PKCS11Error as e:
            rv = e.rv
            call.error = e.detail or None
        except Exception as e:  # noqa: BLE001 - the host must never see a Python exception
            rv = CKR.GENERAL_ERROR
            call.error = f"{type(e).__name__}: {e}"
        if spec_rv is not None and rv in spec_rv:
            call.error = call.error or f"backend returned {CKR(rv).name}"
            rv = spec_rv[rv]
        return shim.record_call(call, rv, t0)

    entry.__name__ = f"entry_{name}"
    return entry


def install(shim: Shim, ffi: Any) -> None:
    """Bind every extern "Python" callback of the core to its entry."""
    from shim import handlers  # noqa: F401  - registers the overriding handlers

    for spec in FUNCTIONS:
        if spec.name in C_ONLY:
            continue
        handler = HANDLERS.get(spec.name) or forward(spec.name)
        ffi.def_extern(name=f"sc4py_{spec.name}", error=int(CKR.GENERAL_ERROR))(
            make_entry(shim, spec.name, handler)
        )
