"""C_Initialize, C_Finalize, C_GetInfo: the shim's own library state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shim.constants import CKR, InitFlag
from shim.dispatch import Call, handles
from shim.errors import PKCS11Error
from shim.ffi import NULL, ffi
from shim.marshal import fill_text

if TYPE_CHECKING:
    from shim.runtime import Shim


def _check_init_args(p_init_args: Any, call: Call) -> int:
    """PKCS#11 v2.40 5.4 C_Initialize argument rules.  The shim always locks
    with OS primitives (Python's), so application mutex callbacks without
    CKF_OS_LOCKING_OK cannot be honoured: CKR_CANT_LOCK, as the spec says."""
    if p_init_args == NULL:
        return 0
    a = ffi.cast("CK_C_INITIALIZE_ARGS *", p_init_args)
    if a.pReserved != NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "pReserved must be NULL")
    given = [f != NULL for f in (a.CreateMutex, a.DestroyMutex, a.LockMutex, a.UnlockMutex)]
    flags = int(a.flags)
    call.args["init_flags"] = hex(flags)
    if any(given) and not all(given):
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "some but not all mutex callbacks given")
    if all(given) and not flags & InitFlag.OS_LOCKING_OK:
        raise PKCS11Error(CKR.CANT_LOCK, "application mutexes without CKF_OS_LOCKING_OK")
    return flags


@handles("C_Initialize")
def initialize(shim: Shim, call: Call, p_init_args: Any) -> int:
    with shim.lock:
        if shim.initialized:
            return CKR.CRYPTOKI_ALREADY_INITIALIZED
        flags = _check_init_args(p_init_args, call)
        backend = shim.load_backend()
        args = ffi.new("CK_C_INITIALIZE_ARGS *")
        args.flags = InitFlag.OS_LOCKING_OK | (flags & InitFlag.LIBRARY_CANT_CREATE_OS_THREADS)
        rv = backend.fn["C_Initialize"](args)
        if rv == CKR.CRYPTOKI_ALREADY_INITIALIZED and shim.inherited:
            # A forked child: the backend still holds the parent's state.
            backend.fn["C_Finalize"](NULL)
            rv = backend.fn["C_Initialize"](args)
            call.args["reinitialised_after_fork"] = True
        elif rv == CKR.CRYPTOKI_ALREADY_INITIALIZED:
            # Someone else in this process initialised the same library: share it.
            call.args["backend_shared"] = True
            rv = CKR.OK
        if rv == CKR.OK:
            shim.initialized = True
            shim.inherited = False
        return int(rv)


@handles("C_Finalize")
def finalize(shim: Shim, call: Call, p_reserved: Any) -> int:
    if p_reserved != NULL:
        return CKR.ARGUMENTS_BAD
    with shim.lock:
        rv = shim.backend.fn["C_Finalize"](NULL)
        shim.initialized = False
        shim.sessions.clear()
        shim.soft.reset()  # session objects, capability caches: a new C_Initialize starts clean
        return int(rv)


@handles("C_GetInfo")
def get_info(shim: Shim, call: Call, p_info: Any) -> int:
    """The shim describes itself; the backend's identity is in the audit log."""
    from shim.runtime import VERSION

    if p_info == NULL:
        return CKR.ARGUMENTS_BAD
    p_info.cryptokiVersion.major, p_info.cryptokiVersion.minor = 2, 40
    fill_text(p_info.manufacturerID, "smartcards4dnssec")
    p_info.flags = 0
    fill_text(p_info.libraryDescription, "smartcards4dnssec PKCS#11 shim")
    p_info.libraryVersion.major, p_info.libraryVersion.minor = VERSION
    return CKR.OK
