"""The completion layer's session table: one typed :class:`Session` per open session.

A session records its slot (derived public keys and the capability cache are
per slot) and its active operations; a ``None`` operation means the card runs
whatever is active (the signing hot path keeps no record of it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shim.soft.digest import Digest
from shim.soft.hashsign import HashThenSign
from shim.soft.hmac import Hmac
from shim.soft.operations import CardOperation
from shim.soft.verify import Verifier

SignOperation = Hmac | HashThenSign
VerifyOperation = Hmac | Verifier | CardOperation
DigestOperation = Digest | CardOperation


@dataclass(eq=False, slots=True)
class Session:
    handle: int
    slot: int
    sign: SignOperation | None = None
    verify: VerifyOperation | None = None
    digest: DigestOperation | None = None
    find: list[int] | None = None  # an active C_FindObjects: shim objects still to hand out


class SessionTable(dict[int, Session]):
    """Session handle -> :class:`Session`.  A dict, so the per-call look-up (``get``) costs no
    Python frame; changes that walk the table take the lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def slot_of(self, handle: int) -> int | None:
        s = self.get(handle)
        return None if s is None else s.slot

    def open(self, handle: int, slot: int) -> Session:
        """A new session (a reused handle number starts afresh)."""
        s = Session(handle, slot)
        with self._lock:
            self[handle] = s
        return s

    def close(self, handle: int) -> None:
        with self._lock:
            self.pop(handle, None)

    def close_slot(self, slot: int) -> None:
        with self._lock:
            for h in [h for h, s in self.items() if s.slot == slot]:
                del self[h]

    def clear(self) -> None:
        with self._lock:
            super().clear()
