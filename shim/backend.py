"""The card's real PKCS#11 module ("the backend")."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from shim import cabi
from shim.constants import CKR, name_of
from shim.errors import PKCS11Error
from shim.functions import FUNCTIONS


def _masked(*_: Any) -> int:
    return int(CKR.FUNCTION_NOT_SUPPORTED)


class Backend:
    """A loaded module.  ``fn[name]`` calls the backend's function, or answers
    CKR_FUNCTION_NOT_SUPPORTED when the configuration masks it; software
    completion then sees the same refusal a card would give."""

    def __init__(self, path: str, masked: frozenset[str] = frozenset()) -> None:
        if not os.path.isfile(path):
            raise PKCS11Error(CKR.GENERAL_ERROR, f"backend module {path!r} does not exist")
        ffi = cabi.ffi
        out = ffi.new("CK_FUNCTION_LIST_PTR *")
        err = ffi.new("char[512]")
        deepbind = ffi.new("int *")
        rv = cabi.lib.sc4_load_backend(path.encode(), out, err, 512, deepbind)
        if rv != CKR.OK or out[0] == ffi.NULL:
            detail = ffi.string(err).decode(errors="replace") or name_of(CKR, rv)
            raise PKCS11Error(CKR.GENERAL_ERROR, f"cannot load backend {path!r}: {detail}")
        self.path = path
        self.deepbind = bool(deepbind[0])
        self.functions = out[0]
        self.masked = masked
        self.fn: dict[str, Callable[..., int]] = {
            f.name: (_masked if f.name in masked else getattr(self.functions, f.name)) for f in FUNCTIONS
        }

    def identity(self) -> dict[str, Any]:
        """What the audit log says about the backend: file, digest, self-description."""
        with open(self.path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        ident: dict[str, Any] = {"path": self.path, "sha256": digest, "masked": sorted(self.masked),
                                 "deepbind": self.deepbind}
        info = cabi.ffi.new("CK_INFO *")
        rv = self.functions.C_GetInfo(info)
        if rv == CKR.OK:
            ident.update(
                cryptoki=f"{info.cryptokiVersion.major}.{info.cryptokiVersion.minor}",
                manufacturer=bytes(info.manufacturerID).decode(errors="replace").rstrip(),
                description=bytes(info.libraryDescription).decode(errors="replace").rstrip(),
                version=f"{info.libraryVersion.major}.{info.libraryVersion.minor}",
            )
        return ident
