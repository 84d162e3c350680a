"""Object functions over card objects and the shim's own (session objects,
derived public keys): shim handles are answered here, card handles forwarded."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from shim import attributes, cabi
from shim.attributes import FALSE, TRUE, boolean, ulong
from shim.call import Call
from shim.constants import CK_INVALID_HANDLE, CKA, CKO, CKR
from shim.errors import PKCS11Error
from shim.handlers.sessions import require_session
from shim.marshal import read_template, write_attributes
from shim.soft import card, pubkeys
from shim.soft.objects import READ_ONLY, SoftObject, complete_template
from shim.soft.state import CompletionState

_PUBLIC_ATTRS = (CKA.CLASS, CKA.KEY_TYPE, CKA.ID, CKA.LABEL, CKA.EC_PARAMS, CKA.EC_POINT, CKA.MODULUS,
                 CKA.PUBLIC_EXPONENT, CKA.VERIFY, CKA.SUBJECT, CKA.START_DATE, CKA.END_DATE)


def _template(ptr: Any, count: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for a in read_template(ptr, count):
        if a.value is None:
            raise PKCS11Error(CKR.ARGUMENTS_BAD, "template attribute with a NULL value")
        out[a.type] = a.value
    return out


def _shim_object(st: CompletionState, h_obj: int) -> SoftObject | None:
    if h_obj == CK_INVALID_HANDLE:
        raise PKCS11Error(CKR.OBJECT_HANDLE_INVALID, "handle 0 is never an object")
    if st.objects.is_shim_handle(int(h_obj)):
        return st.objects.require(int(h_obj))
    return None


def create_object(st: CompletionState, call: Call, h: int, ptmpl: Any, count: int, ph: Any) -> int:
    template = _template(ptmpl, count)
    if ph == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL object handle pointer")
    cls = ulong(template.get(CKA.CLASS))
    if boolean(template.get(CKA.TOKEN), False) and cls != CKO.PRIVATE_KEY:
        return int(st.card["C_CreateObject"](h, ptmpl, count, ph))  # token objects: the card's
    s = require_session(st, h)
    attrs, secret = complete_template(template)
    obj = st.objects.add(s.slot, int(h), attrs, secret)
    ph[0] = obj.handle
    call.args["new_object"] = obj.handle  # "object" (from the summary) stays the source
    call.src = "soft"
    return CKR.OK


def copy_object(st: CompletionState, call: Call, h: int, h_obj: int, ptmpl: Any, count: int, ph: Any) -> int:
    overrides = _template(ptmpl, count)
    if ph == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL object handle pointer")
    s = require_session(st, h)
    src = _shim_object(st, h_obj)
    caps = st.caps
    if src is None:
        if not caps.lacks("C_CopyObject"):
            rv = int(st.card["C_CopyObject"](h, h_obj, ptmpl, count, ph))
            if rv == CKR.OK:
                call.args["new_object"] = int(ph[0])
                call.src = "card"
            if rv != CKR.FUNCTION_NOT_SUPPORTED:
                return rv
            caps.remember_missing("C_CopyObject")
        attrs = card.read_attributes(st.card, h, h_obj, _PUBLIC_ATTRS)
        if ulong(attrs.get(CKA.CLASS)) != CKO.PUBLIC_KEY:
            raise PKCS11Error(CKR.FUNCTION_NOT_SUPPORTED, "the card cannot copy this object; the shim copies "
                                                          "only public keys")
        base = attrs
    else:
        if not boolean(src.attrs.get(CKA.COPYABLE), True):
            raise PKCS11Error(CKR.ACTION_PROHIBITED, "object is not copyable")
        base = dict(src.attrs)
        base.pop(CKA.MODULUS_BITS, None)
        if src.card_private is not None:  # a derived key copied becomes a plain session key
            for a in (CKA.TOKEN, CKA.MODIFIABLE, CKA.DESTROYABLE):
                base.pop(a, None)
    base.pop(CKA.TOKEN, None)
    merged = {**base, **overrides}
    attrs, secret = complete_template(merged)
    obj = st.objects.add(s.slot, int(h), attrs, secret | (src.secret_attrs if src else frozenset()))
    ph[0] = obj.handle
    call.args["new_object"] = obj.handle  # "object" (from the summary) stays the source
    call.src = "soft"
    return CKR.OK


def destroy_object(st: CompletionState, call: Call, h: int, h_obj: int) -> int:
    obj = _shim_object(st, h_obj)
    if obj is None:
        return int(st.card["C_DestroyObject"](h, h_obj))
    require_session(st, h)
    if not boolean(obj.attrs.get(CKA.DESTROYABLE), True):
        raise PKCS11Error(CKR.ACTION_PROHIBITED, "derived public keys mirror card keys and cannot be destroyed")
    st.objects.remove(obj.handle)
    call.src = "soft"
    return CKR.OK


def _copyable(st: CompletionState, h: int, h_obj: int) -> bytes:
    """CKA_COPYABLE of a card object whose module does not know the attribute: what C_CopyObject
    through the shim does with it.  A public key is copied (by the card, or by the shim when the
    card cannot); anything else is the card's to copy, and a card written before v2.40 copies
    nothing (OpenSC: CKR_FUNCTION_NOT_SUPPORTED).  pkcs11-provider copies a CK_TRUE token key into
    a session object to cache it."""
    cls = ulong(card.read_attributes(st.card, h, h_obj, (CKA.CLASS,)).get(CKA.CLASS))
    return TRUE if cls == CKO.PUBLIC_KEY else FALSE


# The v2.40 storage attributes (shim.spec.V240_STORAGE_ATTRIBUTES) the shim answers for card objects
# when the module does not know them.  CKA_DESTROYABLE is not among them: C_DestroyObject goes to
# the card, and only the card knows whether it would destroy the object.
CARD_ATTRIBUTE_ANSWERS: dict[int, Callable[[CompletionState, int, int], bytes]] = {CKA.COPYABLE: _copyable}


def _card_attribute_value(st: CompletionState, call: Call, h: int, h_obj: int, ptmpl: Any, count: int) -> int:
    get = st.card["C_GetAttributeValue"]
    if ptmpl == cabi.NULL or not any(int(ptmpl[i].type) in CARD_ATTRIBUTE_ANSWERS for i in range(count)):
        return int(get(h, h_obj, ptmpl, count))
    lengths = [int(ptmpl[i].ulValueLen) for i in range(count)]
    rv = int(get(h, h_obj, ptmpl, count))
    if rv != CKR.ATTRIBUTE_TYPE_INVALID:
        return rv
    answers = {t: partial(f, st, h, h_obj) for t, f in CARD_ATTRIBUTE_ANSWERS.items()}
    rv, answered = card.answer_unknown(st.card, h, h_obj, ptmpl, count, lengths, answers)
    if answered:
        call.args["shim_answered"] = [attributes.name(t) for t in answered]
    return rv


def get_attribute_value(st: CompletionState, call: Call, h: int, h_obj: int, ptmpl: Any, count: int) -> int:
    obj = _shim_object(st, h_obj)
    if obj is None:
        return _card_attribute_value(st, call, h, h_obj, ptmpl, count)
    call.src = "soft"
    values = {t: obj.value(t) for t in obj.attrs}
    return write_attributes(ptmpl, count, values)


def set_attribute_value(st: CompletionState, call: Call, h: int, h_obj: int, ptmpl: Any, count: int) -> int:
    obj = _shim_object(st, h_obj)
    if obj is None:
        return int(st.card["C_SetAttributeValue"](h, h_obj, ptmpl, count))
    changes = _template(ptmpl, count)
    if not boolean(obj.attrs.get(CKA.MODIFIABLE), True):
        raise PKCS11Error(CKR.ACTION_PROHIBITED, "object is not modifiable")
    ro = [attributes.name(t) for t in changes if t in READ_ONLY]
    if ro:
        raise PKCS11Error(CKR.ATTRIBUTE_READ_ONLY, f"read-only attributes {ro}")
    obj.attrs.update(changes)
    call.src = "soft"
    return CKR.OK


def get_object_size(st: CompletionState, call: Call, h: int, h_obj: int, psize: Any) -> int:
    obj = _shim_object(st, h_obj)
    if obj is None:
        return int(st.card["C_GetObjectSize"](h, h_obj, psize))
    if psize == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL size pointer")
    psize[0] = obj.size()
    return CKR.OK


def _derive_public_keys(st: CompletionState, call: Call, h: int, slot: int) -> None:
    """Once per slot (after private keys became visible): present public keys the card lacks."""
    if slot in st.scanned_slots:
        return
    try:
        seen, derived, shadowed = pubkeys.missing_public_keys(st.card, h)
    except PKCS11Error as e:
        call.args["derive_error"] = e.detail
        return
    if not seen:
        return  # not logged in yet: try again next search
    st.scanned_slots.add(slot)
    if shadowed:
        st.shadowed[slot] = shadowed
        call.args["shadowed_public_keys"] = sorted(shadowed)
    for priv, attrs in derived:
        if st.objects.derived_for(slot, priv) is None:
            st.objects.add(slot, None, attrs, card_private=priv)
    if derived:
        call.args["derived_public_keys"] = len(derived)


def find_objects_init(st: CompletionState, call: Call, h: int, ptmpl: Any, count: int) -> int:
    template = [(a.type, a.value) for a in read_template(ptmpl, count)]
    s = require_session(st, h)
    if s.find is not None:
        return CKR.OPERATION_ACTIVE
    cls = dict(template).get(CKA.CLASS)
    if cls is None or ulong(cls) == CKO.PUBLIC_KEY:
        _derive_public_keys(st, call, h, s.slot)
    rv = int(st.card["C_FindObjectsInit"](h, ptmpl, count))
    if rv == CKR.OK:
        s.find = st.objects.find(s.slot, template)
    return rv


def find_objects(st: CompletionState, call: Call, h: int, ph: Any, max_count: int, pcount: Any) -> int:
    s = st.sessions.get(int(h))
    pending = s.find if s is not None else None
    hidden = st.shadowed.get(s.slot) if s is not None else None
    rv = int(st.card["C_FindObjects"](h, ph, max_count, pcount))
    while hidden and rv == CKR.OK and pcount != cabi.NULL and ph != cabi.NULL and pcount[0]:
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
        rv = int(st.card["C_FindObjects"](h, ph, max_count, pcount))
    if rv == CKR.OK and pcount != cabi.NULL and ph != cabi.NULL:
        n = int(pcount[0])
        st.objects.note_card_handles(int(ph[i]) for i in range(n))
        while pending and n < max_count:
            ph[n] = pending.pop(0)
            n += 1
        pcount[0] = n
        call.args["found"] = [int(ph[i]) for i in range(min(n, 16))]
    return rv


def find_objects_final(st: CompletionState, call: Call, h: int) -> int:
    rv = int(st.card["C_FindObjectsFinal"](h))
    s = st.sessions.get(int(h))
    if s is not None:
        s.find = None
    return rv
