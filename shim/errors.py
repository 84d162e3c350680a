"""Exceptions that carry a CKR out of a handler to the dispatcher."""

from __future__ import annotations

from shim.constants import CKR


class PKCS11Error(Exception):
    """Raised by handlers to return ``rv``; ``detail`` goes to the audit record."""

    def __init__(self, rv: int, detail: str = "") -> None:
        super().__init__(detail or CKR(rv).name if rv in CKR._value2member_map_ else detail)
        self.rv = rv
        self.detail = detail
