"""Message digests in software, with a serialisable operation state.

hashlib objects cannot be serialised, so the state handed out by
C_GetOperationState is the *accumulated input* (bounded by
:data:`MAX_STATE_INPUT`); C_SetOperationState re-hashes it.  Beyond the bound
the operation keeps working but its state is unsaveable
(CKR_STATE_UNSAVEABLE), as PKCS#11 allows.  The state blob is
``b"SC4D" | version(1) | mechanism(4, big-endian) | input``; it holds nothing
secret (the caller supplied the input).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from shim.constants import CKM, CKR
from shim.errors import PKCS11Error

HASHES: dict[int, str] = {
    CKM.MD5: "md5",
    CKM.RIPEMD160: "ripemd160",
    CKM.SHA_1: "sha1",
    CKM.SHA224: "sha224",
    CKM.SHA256: "sha256",
    CKM.SHA384: "sha384",
    CKM.SHA512: "sha512",
}
MAX_STATE_INPUT = 1 << 20
_MAGIC = b"SC4D\x01"


class Hashing:
    """A running hash (hashlib or hmac object) that can be read without ending it: size
    queries ask for the result first and expect the operation to stay active."""

    _h: Any
    on_card = False

    @property
    def size(self) -> int:
        return int(self._h.digest_size)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def peek(self) -> bytes:
        """The result so far, leaving the operation active."""
        return bytes(self._h.copy().digest())

    def peek_with(self, data: bytes) -> bytes:
        """The result of the input so far plus ``data``, leaving the operation as it was."""
        h = self._h.copy()
        h.update(data)
        return bytes(h.digest())


class Digest(Hashing):
    """One digest operation (C_DigestInit .. C_DigestFinal)."""

    def __init__(self, mechanism: int) -> None:
        name = HASHES.get(mechanism)
        if name is None:
            raise PKCS11Error(CKR.MECHANISM_INVALID, "no software digest for this mechanism")
        self.mechanism = mechanism
        self._h = hashlib.new(name)
        self._input: bytearray | None = bytearray()
        self.updated = False

    def update(self, data: bytes) -> None:
        self._h.update(data)
        self.updated = True
        if self._input is not None:
            if len(self._input) + len(data) > MAX_STATE_INPUT:
                self._input = None
            else:
                self._input += data

    def state(self) -> bytes:
        if self._input is None:
            raise PKCS11Error(CKR.STATE_UNSAVEABLE, f"digest input exceeds {MAX_STATE_INPUT} bytes")
        return _MAGIC + struct.pack(">I", self.mechanism) + bytes(self._input)

    @classmethod
    def from_state(cls, blob: bytes) -> Digest:
        if len(blob) < len(_MAGIC) + 4 or not blob.startswith(_MAGIC):
            raise PKCS11Error(CKR.SAVED_STATE_INVALID, "not a smartcards4dnssec digest state")
        (mech,) = struct.unpack(">I", blob[len(_MAGIC):len(_MAGIC) + 4])
        if mech not in HASHES:
            raise PKCS11Error(CKR.SAVED_STATE_INVALID, "unknown digest mechanism in saved state")
        d = cls(mech)
        data = blob[len(_MAGIC) + 4:]
        if data:
            d.update(data)
        return d
