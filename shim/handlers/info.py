"""C_GetInfo: the shim describes itself; the backend's identity is in the audit log."""

from __future__ import annotations

from typing import Any

from shim import cabi
from shim.call import Call
from shim.constants import CKR
from shim.marshal import fill_text
from shim.soft.state import CompletionState

VERSION = (0, 1)


def get_info(st: CompletionState, call: Call, p_info: Any) -> int:
    if p_info == cabi.NULL:
        return CKR.ARGUMENTS_BAD
    p_info.cryptokiVersion.major, p_info.cryptokiVersion.minor = 2, 40
    fill_text(p_info.manufacturerID, "smartcards4dnssec")
    p_info.flags = 0
    fill_text(p_info.libraryDescription, "smartcards4dnssec PKCS#11 shim")
    p_info.libraryVersion.major, p_info.libraryVersion.minor = VERSION
    return CKR.OK
