"""C_GetMechanismList / C_GetMechanismInfo / C_GetTokenInfo: what the card does plus what
the shim completes, with truthful flags (the table is :mod:`shim.soft.mechanisms`)."""

from __future__ import annotations

from typing import Any

from shim import cabi
from shim.call import Call
from shim.constants import CKR, TokenFlag
from shim.errors import PKCS11Error
from shim.soft.mechanisms import listed, mechanism_table
from shim.soft.state import CompletionState


def get_mechanism_list(st: CompletionState, call: Call, slot: int, plist: Any, pcount: Any) -> int:
    if pcount == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL count pointer")
    probe = cabi.ffi.new("CK_ULONG *")
    rv = int(st.card["C_GetMechanismList"](slot, cabi.NULL, probe))
    if rv != CKR.OK:
        return rv  # bad slot, no token: the card's answer
    mechs = listed(st.caps, int(slot), advertise_keygen=st.advertise_keygen)
    call.args["count"] = len(mechs)
    if plist == cabi.NULL:
        pcount[0] = len(mechs)
        return CKR.OK
    if pcount[0] < len(mechs):
        pcount[0] = len(mechs)
        return CKR.BUFFER_TOO_SMALL
    for i, m in enumerate(mechs):
        plist[i] = m
    pcount[0] = len(mechs)
    return CKR.OK


def get_mechanism_info(st: CompletionState, call: Call, slot: int, mtype: int, pinfo: Any) -> int:
    if pinfo == cabi.NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL info pointer")
    info = mechanism_table(st.caps, int(slot), advertise_keygen=st.advertise_keygen).get(int(mtype))
    if info is None:
        return int(st.card["C_GetMechanismInfo"](slot, mtype, pinfo))
    pinfo.ulMinKeySize, pinfo.ulMaxKeySize, pinfo.flags = info.min_key, info.max_key, int(info.flags)
    call.args["flags"] = hex(int(info.flags))
    card = st.caps.mechanisms(int(slot)).get(int(mtype))
    call.src = "card" if card is not None and card.flags == info.flags else "soft"
    return CKR.OK


def get_token_info(st: CompletionState, call: Call, slot: int, pinfo: Any) -> int:
    """Forwarded unchanged except CKF_RNG: C_GenerateRandom always works through the shim."""
    rv = int(st.card["C_GetTokenInfo"](slot, pinfo))
    if rv == CKR.OK and pinfo != cabi.NULL:
        pinfo.flags |= TokenFlag.RNG
    return rv
