"""The one interface of a session's active operation, and the card-run one.

A session has at most one sign, one verify and one digest operation.  Software
ones (:class:`~shim.soft.digest.Digest`, :class:`~shim.soft.hmac.Hmac`,
:class:`~shim.soft.hashsign.HashThenSign`, :class:`~shim.soft.verify.Verifier`)
hold their own state and take input through :meth:`Operation.update`; a
:class:`CardOperation` only records that the card holds the state, so the
completion layer forwards the rest of the operation to the card.
"""

from __future__ import annotations

from typing import Protocol

from shim.constants import CKR
from shim.errors import PKCS11Error


class Operation(Protocol):
    on_card: bool  # the card holds the state: the shim forwards input, it does not compute

    def update(self, data: bytes) -> None:
        """More input for a multi-part operation."""


class CardOperation:
    """An operation the card runs (a mechanism software does not complete)."""

    on_card = True

    def __init__(self, mechanism: int) -> None:
        self.mechanism = mechanism

    def update(self, data: bytes) -> None:
        raise PKCS11Error(CKR.GENERAL_ERROR, "the card's operation takes its input from the card's C_*Update")
