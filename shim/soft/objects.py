"""Session objects kept by the shim (public keys, generic secrets, data) and
derived public key objects, under handles that never collide with the card's.

Card handles are small counters (SoftHSM) or pointers above 2^32 (some
drivers); shim handles live in ``[HANDLE_BASE, 2^32)``, so every consumer that
keeps handles in 32 bits works.  A handle is the shim's only while the store
holds it (:meth:`ObjectStore.is_shim_handle`): any other handle, in that range
or not, is the card's.  The backend may itself be a shim (a remote card through
p11-kit, whose card host runs the shim) handing out handles in the same range,
so each store starts at a random point of the range and never allocates a
handle the backend has returned.  Objects created in a session die with it;
derived public keys belong to the slot.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shim.attributes import FALSE, SECRET, TRUE, boolean, encode_ulong, ulong
from shim.constants import CK_UNAVAILABLE_INFORMATION, CKA, CKK, CKO, CKR
from shim.errors import PKCS11Error
from shim.soft.verify import public_key

HANDLE_BASE = 0xE000_0000
HANDLE_LIMIT = 1 << 32


@dataclass
class SoftObject:
    handle: int
    slot: int
    session: int | None  # None: a derived public key, owned by the slot
    attrs: dict[int, bytes]
    card_private: int | None = None  # derived public keys: the card private key they mirror
    secret_attrs: frozenset[int] = field(default_factory=frozenset)  # returned as sensitive

    def value(self, atype: int) -> bytes | None:
        return None if atype in self.secret_attrs else self.attrs[atype]

    def matches(self, template: Iterable[tuple[int, bytes | None]]) -> bool:
        return all(self.attrs.get(t) == v for t, v in template)

    def size(self) -> int:
        return sum(len(v) for v in self.attrs.values())


_COMMON: dict[int, bytes] = {CKA.TOKEN: FALSE, CKA.PRIVATE: FALSE, CKA.MODIFIABLE: TRUE, CKA.COPYABLE: TRUE,
           CKA.DESTROYABLE: TRUE, CKA.LABEL: b""}
_KEY: dict[int, bytes] = {CKA.ID: b"", CKA.START_DATE: b"", CKA.END_DATE: b"", CKA.DERIVE: FALSE, CKA.LOCAL: FALSE,
        CKA.KEY_GEN_MECHANISM: encode_ulong(CK_UNAVAILABLE_INFORMATION)}
_PUBLIC: dict[int, bytes] = {CKA.SUBJECT: b"", CKA.ENCRYPT: FALSE, CKA.VERIFY: TRUE, CKA.VERIFY_RECOVER: FALSE,
           CKA.WRAP: FALSE, CKA.TRUSTED: FALSE}
_SECRET: dict[int, bytes] = {
           CKA.SENSITIVE: FALSE, CKA.ENCRYPT: FALSE, CKA.DECRYPT: FALSE, CKA.SIGN: TRUE, CKA.VERIFY: TRUE,
           CKA.WRAP: FALSE, CKA.UNWRAP: FALSE, CKA.EXTRACTABLE: TRUE, CKA.ALWAYS_SENSITIVE: FALSE,
           CKA.NEVER_EXTRACTABLE: FALSE, CKA.CHECK_VALUE: b""}
_DATA: dict[int, bytes] = {CKA.APPLICATION: b"", CKA.OBJECT_ID: b"", CKA.VALUE: b""}
READ_ONLY = frozenset({CKA.CLASS, CKA.KEY_TYPE, CKA.TOKEN, CKA.PRIVATE, CKA.MODULUS, CKA.PUBLIC_EXPONENT,
                        CKA.EC_PARAMS, CKA.EC_POINT, CKA.VALUE, CKA.VALUE_LEN, CKA.MODULUS_BITS, CKA.LOCAL,
                        CKA.MODIFIABLE, CKA.COPYABLE, CKA.DESTROYABLE, CKA.ALWAYS_SENSITIVE,
                        CKA.NEVER_EXTRACTABLE, CKA.KEY_GEN_MECHANISM})
_SECRET_KEY_TYPES = frozenset({CKK.GENERIC_SECRET, CKK.MD5_HMAC, CKK.SHA_1_HMAC, CKK.SHA224_HMAC,
                               CKK.SHA256_HMAC, CKK.SHA384_HMAC, CKK.SHA512_HMAC})


def complete_template(template: Mapping[int, bytes]) -> tuple[dict[int, bytes], frozenset[int]]:
    """Validate a C_CreateObject template for a shim session object and fill defaults.

    Returns (attributes, attributes to report as sensitive)."""
    if CKA.CLASS not in template:
        raise PKCS11Error(CKR.TEMPLATE_INCOMPLETE, "CKA_CLASS missing")
    cls = ulong(template[CKA.CLASS])
    if cls == CKO.PRIVATE_KEY:
        what = "with key material" if SECRET & template.keys() else ""
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT,
                          f"private key import {what} refused: keys live on the card (generate them there)")
    attrs: dict[int, bytes] = dict(_COMMON)
    secret: frozenset[int] = frozenset()
    if cls == CKO.PUBLIC_KEY:
        attrs.update(_KEY)
        attrs.update(_PUBLIC)
        attrs.update(template)
        kt = ulong(attrs.get(CKA.KEY_TYPE))
        need = {CKK.EC: (CKA.EC_PARAMS, CKA.EC_POINT), CKK.EC_EDWARDS: (CKA.EC_PARAMS, CKA.EC_POINT),
                CKK.RSA: (CKA.MODULUS, CKA.PUBLIC_EXPONENT)}.get(kt)  # type: ignore[call-overload]
        if need is None:
            raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT if kt is not None else CKR.TEMPLATE_INCOMPLETE,
                              "public key type must be CKK_EC, CKK_RSA or CKK_EC_EDWARDS")
        missing = [a for a in need if a not in attrs]
        if missing:
            raise PKCS11Error(CKR.TEMPLATE_INCOMPLETE, f"missing {[CKA(a).name for a in missing]}")
        try:
            key = public_key(attrs)
        except PKCS11Error as e:
            raise PKCS11Error(CKR.ATTRIBUTE_VALUE_INVALID, e.detail) from None
        if kt == CKK.RSA:
            attrs[CKA.MODULUS_BITS] = encode_ulong(key.key_size)  # type: ignore[union-attr]
    elif cls == CKO.SECRET_KEY:
        attrs.update(_KEY)
        attrs.update(_SECRET)
        attrs.update(template)
        kt = ulong(attrs.get(CKA.KEY_TYPE))
        if kt not in _SECRET_KEY_TYPES:
            raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "the shim keeps only generic/HMAC secret keys")
        if CKA.VALUE not in attrs:
            raise PKCS11Error(CKR.TEMPLATE_INCOMPLETE, "CKA_VALUE missing")
        attrs[CKA.VALUE_LEN] = encode_ulong(len(attrs[CKA.VALUE]))
        if boolean(attrs.get(CKA.SENSITIVE), False) or not boolean(attrs.get(CKA.EXTRACTABLE), True):
            secret = frozenset({CKA.VALUE})
        attrs[CKA.ALWAYS_SENSITIVE] = attrs[CKA.SENSITIVE]
        attrs[CKA.NEVER_EXTRACTABLE] = FALSE if boolean(attrs.get(CKA.EXTRACTABLE), True) else TRUE
    elif cls == CKO.DATA:
        attrs.update(_DATA)
        attrs.update(template)
    else:
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "the shim keeps only public keys, secret keys and data")
    if boolean(attrs.get(CKA.TOKEN), False):
        raise PKCS11Error(CKR.TEMPLATE_INCONSISTENT, "token objects are the card's business")
    return attrs, secret


class ObjectStore:
    def __init__(self) -> None:
        self._objects: dict[int, SoftObject] = {}
        self._derived: dict[tuple[int, int], int] = {}  # (slot, card private handle) -> handle
        self._card_handles: set[int] = set()  # backend handles seen in our range: never allocated
        self._next = itertools.count(HANDLE_BASE + secrets.randbelow((HANDLE_LIMIT - HANDLE_BASE) // 2))
        self._lock = threading.Lock()

    def is_shim_handle(self, handle: int) -> bool:
        return handle in self._objects

    def note_card_handles(self, handles: Iterable[int]) -> None:
        """Handles the backend returned: ours never take their values."""
        with self._lock:
            self._card_handles.update(h for h in handles if HANDLE_BASE <= h < HANDLE_LIMIT)

    def get(self, handle: int) -> SoftObject | None:
        return self._objects.get(handle)

    def require(self, handle: int) -> SoftObject:
        obj = self._objects.get(handle)
        if obj is None:
            raise PKCS11Error(CKR.OBJECT_HANDLE_INVALID, "no such shim object (destroyed or its session closed)")
        return obj

    def _handle(self) -> int:
        h = next(self._next)
        while h >= HANDLE_LIMIT or h in self._objects or h in self._card_handles:
            if h >= HANDLE_LIMIT:  # wrap
                self._next = itertools.count(HANDLE_BASE)
            h = next(self._next)
        return h

    def add(self, slot: int, session: int | None, attrs: dict[int, bytes],
            secret: frozenset[int] = frozenset(), card_private: int | None = None) -> SoftObject:
        with self._lock:
            obj = SoftObject(self._handle(), slot, session, attrs, card_private, secret)
            self._objects[obj.handle] = obj
            if card_private is not None:
                self._derived[(slot, card_private)] = obj.handle
        return obj

    def derived_for(self, slot: int, card_private: int) -> SoftObject | None:
        h = self._derived.get((slot, card_private))
        return None if h is None else self._objects.get(h)

    def remove(self, handle: int) -> None:
        with self._lock:
            obj = self._objects.pop(handle, None)
            if obj is not None and obj.card_private is not None:
                self._derived.pop((obj.slot, obj.card_private), None)

    def drop_session(self, session: int) -> int:
        with self._lock:
            gone = [h for h, o in self._objects.items() if o.session == session]
            for h in gone:
                del self._objects[h]
        return len(gone)

    def drop_slot(self, slot: int, *, derived: bool = False) -> None:
        with self._lock:
            for h, o in list(self._objects.items()):
                if o.slot == slot and (o.session is not None or derived):
                    del self._objects[h]
            if derived:
                self._derived = {k: v for k, v in self._derived.items() if k[0] != slot}

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()
            self._derived.clear()

    def find(self, slot: int, template: list[tuple[int, bytes | None]]) -> list[int]:
        return [h for h, o in list(self._objects.items()) if o.slot == slot and o.matches(template)]
