"""Object functions over card objects and the shim's own (session objects,
derived public keys): shim handles are answered here, card handles forwarded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shim.constants import CK_INVALID_HANDLE, CKA, CKO, CKR
from shim.dispatch import Call, handles
from shim.errors import PKCS11Error
from shim.ffi import NULL
from shim.handlers.sessions import session_state
from shim.marshal import read_template, write_attributes
from shim.soft import card, pubkeys
from shim.soft.objects import READ_ONLY, ObjectStore, SoftObject, as_bool, as_ulong, complete_template

if TYPE_CHECKING:
    from shim.runtime import Shim

_PUBLIC_ATTRS = (CKA.CLASS, CKA.KEY_TYPE, CKA.ID, CKA.LABEL, CKA.EC_PARAMS, CKA.EC_POINT, CKA.MODULUS,
                 CKA.PUBLIC_EXPONENT, CKA.VERIFY, CKA.SUBJECT, CKA.START_DATE, CKA.END_DATE)


def _template(ptr: Any, count: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for a in read_template(ptr, count):
        if a.value is None:
            raise PKCS11Error(CKR.ARGUMENTS_BAD, "template attribute with a NULL value")
        out[a.type] = a.value
    return out


def _shim_object(shim: Shim, h_obj: int) -> SoftObject | None:
    if h_obj == CK_INVALID_HANDLE:
        raise PKCS11Error(CKR.OBJECT_HANDLE_INVALID, "handle 0 is never an object")
    if ObjectStore.is_shim_handle(int(h_obj)):
        return shim.soft.objects.require(int(h_obj))
    return None


@handles("C_CreateObject")
def create_object(shim: Shim, call: Call, h: int, ptmpl: Any, count: int, ph: Any) -> int:
    template = _template(ptmpl, count)
    if ph == NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL object handle pointer")
    cls = as_ulong(template.get(CKA.CLASS))
    if as_bool(template.get(CKA.TOKEN), False) and cls != CKO.PRIVATE_KEY:
        return int(shim.backend.fn["C_CreateObject"](h, ptmpl, count, ph))  # token objects: the card's
    st = session_state(shim, h)
    attrs, secret = complete_template(template)
    obj = shim.soft.objects.add(st["slot"], int(h), attrs, secret)
    ph[0] = obj.handle
    call.args["new_object"] = obj.handle  # "object" (from the summary) stays the source
    call.src = "soft"
    return CKR.OK


@handles("C_CopyObject")
def copy_object(shim: Shim, call: Call, h: int, h_obj: int, ptmpl: Any, count: int, ph: Any) -> int:
    overrides = _template(ptmpl, count)
    if ph == NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL object handle pointer")
    st = session_state(shim, h)
    src = _shim_object(shim, h_obj)
    caps = shim.soft.caps
    if src is None:
        if not caps.lacks("C_CopyObject"):
            rv = int(shim.backend.fn["C_CopyObject"](h, h_obj, ptmpl, count, ph))
            if rv == CKR.OK:
                call.args["new_object"] = int(ph[0])
                call.src = "card"
            if rv != CKR.FUNCTION_NOT_SUPPORTED:
                return rv
            caps.remember_missing("C_CopyObject")
        attrs = card.read_attributes(shim.backend.fn, h, h_obj, _PUBLIC_ATTRS)
        if as_ulong(attrs.get(CKA.CLASS)) != CKO.PUBLIC_KEY:
            raise PKCS11Error(CKR.FUNCTION_NOT_SUPPORTED, "the card cannot copy this object; the shim copies "
                                                          "only public keys")
        base = attrs
    else:
        if not as_bool(src.attrs.get(CKA.COPYABLE), True):
            raise PKCS11Error(CKR.ACTION_PROHIBITED, "object is not copyable")
        base = dict(src.attrs)
        base.pop(CKA.MODULUS_BITS, None)
        if src.card_private is not None:  # a derived key copied becomes a plain session key
            for a in (CKA.TOKEN, CKA.MODIFIABLE, CKA.DESTROYABLE):
                base.pop(a, None)
    base.pop(CKA.TOKEN, None)
    merged = {**base, **overrides}
    attrs, secret = complete_template(merged)
    obj = shim.soft.objects.add(st["slot"], int(h), attrs, secret | (src.secret_attrs if src else frozenset()))
    ph[0] = obj.handle
    call.args["new_object"] = obj.handle  # "object" (from the summary) stays the source
    call.src = "soft"
    return CKR.OK


@handles("C_DestroyObject")
def destroy_object(shim: Shim, call: Call, h: int, h_obj: int) -> int:
    obj = _shim_object(shim, h_obj)
    if obj is None:
        return int(shim.backend.fn["C_DestroyObject"](h, h_obj))
    session_state(shim, h)
    if not as_bool(obj.attrs.get(CKA.DESTROYABLE), True):
        raise PKCS11Error(CKR.ACTION_PROHIBITED, "derived public keys mirror card keys and cannot be destroyed")
    shim.soft.objects.remove(obj.handle)
    call.src = "soft"
    return CKR.OK


@handles("C_GetAttributeValue")
def get_attribute_value(shim: Shim, call: Call, h: int, h_obj: int, ptmpl: Any, count: int) -> int:
    obj = _shim_object(shim, h_obj)
    if obj is None:
        return int(shim.backend.fn["C_GetAttributeValue"](h, h_obj, ptmpl, count))
    call.src = "soft"
    values = {t: obj.value(t) for t in obj.attrs}
    return write_attributes(ptmpl, count, values)


@handles("C_SetAttributeValue")
def set_attribute_value(shim: Shim, call: Call, h: int, h_obj: int, ptmpl: Any, count: int) -> int:
    obj = _shim_object(shim, h_obj)
    if obj is None:
        return int(shim.backend.fn["C_SetAttributeValue"](h, h_obj, ptmpl, count))
    changes = _template(ptmpl, count)
    if not as_bool(obj.attrs.get(CKA.MODIFIABLE), True):
        raise PKCS11Error(CKR.ACTION_PROHIBITED, "object is not modifiable")

    ro = [CKA(t).name if t in CKA._value2member_map_ else hex(t) for t in changes if t in READ_ONLY]
    if ro:
        raise PKCS11Error(CKR.ATTRIBUTE_READ_ONLY, f"read-only attributes {ro}")
    obj.attrs.update(changes)
    call.src = "soft"
    return CKR.OK


@handles("C_GetObjectSize")
def get_object_size(shim: Shim, call: Call, h: int, h_obj: int, psize: Any) -> int:
    obj = _shim_object(shim, h_obj)
    if obj is None:
        return int(shim.backend.fn["C_GetObjectSize"](h, h_obj, psize))
    if psize == NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL size pointer")
    psize[0] = obj.size()
    return CKR.OK


def _derive_public_keys(shim: Shim, call: Call, h: int, slot: int) -> None:
    """Once per slot (after private keys became visible): present public keys the card lacks."""
    soft = shim.soft
    if slot in soft.scanned_slots:
        return
    try:
        seen, derived, shadowed = pubkeys.missing_public_keys(shim.backend.fn, h)
    except PKCS11Error as e:
        call.args["derive_error"] = e.detail
        return
    if not seen:
        return  # not logged in yet: try again next search
    soft.scanned_slots.add(slot)
    if shadowed:
        soft.shadowed[slot] = shadowed
        call.args["shadowed_public_keys"] = sorted(shadowed)
    for priv, attrs in derived:
        if soft.objects.derived_for(slot, priv) is None:
            soft.objects.add(slot, None, attrs, card_private=priv)
    if derived:
        call.args["derived_public_keys"] = len(derived)


@handles("C_FindObjectsInit")
def find_objects_init(shim: Shim, call: Call, h: int, ptmpl: Any, count: int) -> int:
    template = [(a.type, a.value) for a in read_template(ptmpl, count)]
    st = session_state(shim, h)
    if "find" in st:
        return CKR.OPERATION_ACTIVE
    cls = dict(template).get(CKA.CLASS)
    if cls is None or as_ulong(cls) == CKO.PUBLIC_KEY:
        _derive_public_keys(shim, call, h, st["slot"])
    rv = int(shim.backend.fn["C_FindObjectsInit"](h, ptmpl, count))
    if rv == CKR.OK:
        st["find"] = shim.soft.objects.find(st["slot"], template)
    return rv


@handles("C_FindObjects")
def find_objects(shim: Shim, call: Call, h: int, ph: Any, max_count: int, pcount: Any) -> int:
    st = shim.sessions.get(int(h))
    pending: list[int] | None = st.get("find") if st else None
    hidden = shim.soft.shadowed.get(st["slot"]) if st else None
    rv = int(shim.backend.fn["C_FindObjects"](h, ph, max_count, pcount))
    while hidden and rv == CKR.OK and pcount != NULL and ph != NULL and pcount[0]:
        got = [int(ph[i]) for i in range(int(pcount[0]))]
        kept = [x for x in got if x not in hidden]
        if len(kept) == len(got):
            break
        for i, x in enumerate(kept):
            ph[i] = x
        pcount[0] = len(kept)
        if kept:
            break
        # everything in this batch was hidden: ask again, an empty answer means "no more"
        rv = int(shim.backend.fn["C_FindObjects"](h, ph, max_count, pcount))
    if rv == CKR.OK and pcount != NULL and ph != NULL:
        n = int(pcount[0])
        while pending and n < max_count:
            ph[n] = pending.pop(0)
            n += 1
        pcount[0] = n
        call.args["found"] = [int(ph[i]) for i in range(min(n, 16))]
    return rv


@handles("C_FindObjectsFinal")
def find_objects_final(shim: Shim, call: Call, h: int) -> int:
    rv = int(shim.backend.fn["C_FindObjectsFinal"](h))
    st = shim.sessions.get(int(h))
    if st is not None:
        st.pop("find", None)
    return rv


