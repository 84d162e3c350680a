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


INSTALLED: dict[str, Handler] = {}  # name -> the handler bound to the entry (for _abandon)
_OPS = ("Sign", "SignRecover", "Verify", "VerifyRecover", "Digest", "Encrypt", "Decrypt")
_DUMMY = 32  # bytes of throwaway input: a SHA-256-sized digest every signing mechanism accepts


def _abandon(shim: Shim, name: str, args: tuple[Any, ...]) -> None:
    """End the operation a call left active in the backend when fail-closed turned its CKR_OK
    into an error: PKCS#11 v2.40 says an error ends the operation, so the caller's next
    C_SignInit on that session would otherwise get CKR_OPERATION_ACTIVE forever (found by
    tests/reliability disk-full).  Any call other than BUFFER_TOO_SMALL ends it; results are
    thrown away and not audited (the audit log is what failed)."""
    from shim.ffi import NULL, ffi

    op = name[2:].removesuffix("Init").removesuffix("Update").removesuffix("Final")
    h = args[0]
    if name == "C_FindObjectsInit":
        INSTALLED["C_FindObjectsFinal"](shim, Call("C_FindObjectsFinal"), h)
        return
    if op not in _OPS:
        return
    single = name.endswith("Init") or name == f"C_{op}"
    if name == f"C_{op}" and args[-2] != NULL:  # a completed single-part call ended the operation
        return
    if name.endswith("Final") and args[-2] != NULL:
        return
    data = ffi.new("CK_BYTE[]", _DUMMY)
    out = ffi.new("CK_BYTE[]", 16384)
    n = ffi.new("CK_ULONG *", 16384)
    fn = f"C_{op}" if single else f"C_{op}Final"
    if op == "Verify":
        args2: tuple[Any, ...] = (h, data, _DUMMY, out, 64) if single else (h, out, 64)
    elif single:
        args2 = (h, data, _DUMMY, out, n)
    else:
        args2 = (h, out, n)
    INSTALLED[fn](shim, Call(fn), *args2)


def _token_removed(shim: Shim, h: Any) -> bool:
    """Is the token of session ``h`` gone?  OpenSC answers CKR_GENERAL_ERROR when the card is
    pulled in the middle of an APDU exchange (found by tests/reliability card faults); pcscd
    notices the removal up to ~400 ms later, so ask a few times (error path only)."""
    from shim.constants import SlotFlag
    from shim.ffi import ffi

    session = shim.sessions.get(int(h))
    if session is None or "slot" not in session:
        return False
    info = ffi.new("CK_SLOT_INFO *")
    for attempt in range(6):
        rv = shim.backend.fn["C_GetSlotInfo"](session["slot"], info)
        if attempt == 0 and rv == CKR.OK and not info.flags & SlotFlag.REMOVABLE_DEVICE:
            return False  # a fixed token (SoftHSM, an HSM): its errors are its own, answer at once
        if rv == CKR.DEVICE_REMOVED or (rv == CKR.OK and not info.flags & SlotFlag.TOKEN_PRESENT):
            return True
        if rv != CKR.OK:
            return False
        time.sleep(0.1)
    return False


def _scrub(buf: Any, plen: Any) -> None:
    """A refused call hands back no result: zero what the card wrote, report length 0."""
    from shim.ffi import NULL, ffi

    if buf != NULL and plen != NULL and 0 < plen[0] <= 1 << 20:
        ffi.memmove(buf, bytes(int(plen[0])), int(plen[0]))
    if plen != NULL:
        plen[0] = 0


def make_entry(shim: Shim, name: str, handler: Handler) -> Callable[..., int]:
    summarise = compile_summariser(next(f for f in FUNCTIONS if f.name == name))
    needs_init = name not in _BEFORE_INIT
    spec_rv = _SPEC_RV.get(name)
    spec = next(f for f in FUNCTIONS if f.name == name)
    has_session = bool(spec.params) and spec.params[0].ctype == "CK_SESSION_HANDLE"
    # The (buffer, length pointer) pair a result is written to (signature, digest, plaintext...).
    out_at = next((i for i in range(len(spec.params) - 1, 0, -1)
                   if spec.params[i].ctype == "CK_ULONG_PTR" and spec.params[i - 1].ctype == "CK_BYTE_PTR"), None)
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
        if rv == CKR.GENERAL_ERROR and has_session and call.error is None:
            try:
                if _token_removed(shim, args[0]):
                    rv, call.error = CKR.DEVICE_REMOVED, "backend returned CKR_GENERAL_ERROR; token removed"
            except Exception:  # noqa: BLE001, S110 - keep the backend's answer
                pass
        if spec_rv is not None and rv in spec_rv:
            call.error = call.error or f"backend returned {CKR(rv).name}"
            rv = spec_rv[rv]
        out = shim.record_call(call, rv, t0)
        if out != rv and rv == CKR.OK:  # fail-closed refused a call that had succeeded
            try:
                if out_at is not None:
                    _scrub(args[out_at - 1], args[out_at])
                _abandon(shim, name, args)
            except Exception:  # noqa: BLE001, S110 - best effort; the caller already gets an error
                pass
        return out

    entry.__name__ = f"entry_{name}"
    return entry


def install(shim: Shim, ffi: Any) -> None:
    """Bind every extern "Python" callback of the core to its entry."""
    from shim import handlers  # noqa: F401  - registers the overriding handlers

    for spec in FUNCTIONS:
        if spec.name in C_ONLY:
            continue
        handler = HANDLERS.get(spec.name) or forward(spec.name)
        INSTALLED[spec.name] = handler
        ffi.def_extern(name=f"sc4py_{spec.name}", error=int(CKR.GENERAL_ERROR))(
            make_entry(shim, spec.name, handler)
        )
