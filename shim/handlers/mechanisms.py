"""C_GetMechanismList / C_GetMechanismInfo / C_GetTokenInfo: what the card
does plus what the shim completes, with truthful flags.

- card mechanisms keep the card's flags (CKF_HW included); signing ones gain
  CKF_VERIFY because verification is completed in software;
- digests MD5/SHA-1/SHA-2 gain CKF_DIGEST (software, no CKF_HW);
- hashed signature mechanisms whose raw form the card signs are added with
  SIGN|VERIFY and the raw form's key sizes (no CKF_HW: hashing is software);
- HMAC mechanisms are added (SIGN|VERIFY, software);
- software CKM_ECDSA_SHA* work (C_SignInit, C_GetMechanismInfo) but are not
  *listed* unless the card has them: pkcs11-provider picks from the list, and
  with CKM_ECDSA_SHA256 listed it signs in 8 calls (Init, 5 Updates, Final,
  GetOperationState) instead of hashing itself and sending 2 (Init, Sign) —
  every call through the shim costs an audit record, and BIND 9.20 signed a
  1,000-name zone ~1.6x slower that way (bench: ``--only bind``).  No DNSSEC
  consumer needs them listed (BIND 9.16 admits ECDSA on CKM_ECDSA alone);
- ``[compat] advertise_keygen`` (default true): key-pair generation for the
  card's key types is advertised even when the card cannot generate through
  PKCS#11, because BIND 9.16 admits a slot only then; C_GenerateKeyPair still
  goes to the card and returns its own error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shim.constants import CKM, CKR, MechanismFlag, TokenFlag
from shim.dispatch import Call, handles
from shim.errors import PKCS11Error
from shim.ffi import NULL, ffi
from shim.soft.capabilities import MechInfo
from shim.soft.digest import HASHES
from shim.soft.hashsign import HASHED
from shim.soft.hmac import HMACS
from shim.soft.verify import VERIFY_MECHANISMS

if TYPE_CHECKING:
    from shim.runtime import Shim
    from shim.soft.state import Completion

F = MechanismFlag
_KEYGEN_FOR = {  # advertised key generation -> the signing mechanism that proves the key type
    CKM.EC_KEY_PAIR_GEN: CKM.ECDSA,
    CKM.RSA_PKCS_KEY_PAIR_GEN: CKM.RSA_PKCS,
    CKM.EC_EDWARDS_KEY_PAIR_GEN: CKM.EDDSA,
}
_EC_FLAGS = F.EC_F_P | F.EC_NAMEDCURVE | F.EC_UNCOMPRESS | F.EC_COMPRESS
_UNLISTED = frozenset({CKM.ECDSA_SHA1, CKM.ECDSA_SHA224, CKM.ECDSA_SHA256, CKM.ECDSA_SHA384, CKM.ECDSA_SHA512})


def mechanism_table(soft: Completion, slot: int) -> dict[int, MechInfo]:
    card = soft.caps.mechanisms(slot)
    table: dict[int, MechInfo] = {}
    for m, info in card.items():
        flags = info.flags
        if flags & F.SIGN and m in VERIFY_MECHANISMS:
            flags |= F.VERIFY
        table[m] = MechInfo(info.min_key, info.max_key, flags)
    for m in HASHES:
        old = table.get(m)
        table[m] = MechInfo(0, 0, (old.flags if old else 0) | F.DIGEST)
    for m, spec in HASHED.items():
        raw = card.get(spec.raw)
        if raw is None or not raw.flags & F.SIGN:
            continue
        old = table.get(m)
        flags = (old.flags if old else 0) | F.SIGN | F.VERIFY | (raw.flags & _EC_FLAGS)
        table[m] = MechInfo(raw.min_key, raw.max_key, flags)
    for m in HMACS:
        if m not in table:
            table[m] = MechInfo(1, 512, F.SIGN | F.VERIFY)
    if soft.advertise_keygen:
        for gen, signer in _KEYGEN_FOR.items():
            sig = card.get(signer)
            if gen not in table and sig is not None and sig.flags & F.SIGN:
                table[gen] = MechInfo(sig.min_key, sig.max_key, F.GENERATE_KEY_PAIR | (sig.flags & _EC_FLAGS))
    return table


@handles("C_GetMechanismList")
def get_mechanism_list(shim: Shim, call: Call, slot: int, plist: Any, pcount: Any) -> int:
    if pcount == NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL count pointer")
    probe = ffi.new("CK_ULONG *")
    rv = int(shim.backend.fn["C_GetMechanismList"](slot, NULL, probe))
    if rv != CKR.OK:
        return rv  # bad slot, no token: the card's answer
    card = shim.soft.caps.mechanisms(int(slot))
    mechs = sorted(m for m in mechanism_table(shim.soft, int(slot)) if m not in _UNLISTED or m in card)
    call.args["count"] = len(mechs)
    if plist == NULL:
        pcount[0] = len(mechs)
        return CKR.OK
    if pcount[0] < len(mechs):
        pcount[0] = len(mechs)
        return CKR.BUFFER_TOO_SMALL
    for i, m in enumerate(mechs):
        plist[i] = m
    pcount[0] = len(mechs)
    return CKR.OK


@handles("C_GetMechanismInfo")
def get_mechanism_info(shim: Shim, call: Call, slot: int, mtype: int, pinfo: Any) -> int:
    if pinfo == NULL:
        raise PKCS11Error(CKR.ARGUMENTS_BAD, "NULL info pointer")
    info = mechanism_table(shim.soft, int(slot)).get(int(mtype))
    if info is None:
        return int(shim.backend.fn["C_GetMechanismInfo"](slot, mtype, pinfo))
    pinfo.ulMinKeySize, pinfo.ulMaxKeySize, pinfo.flags = info.min_key, info.max_key, int(info.flags)
    call.args["flags"] = hex(int(info.flags))
    card = shim.soft.caps.mechanisms(int(slot)).get(int(mtype))
    call.src = "card" if card is not None and card.flags == info.flags else "soft"
    return CKR.OK


@handles("C_GetTokenInfo")
def get_token_info(shim: Shim, call: Call, slot: int, pinfo: Any) -> int:
    """Forwarded unchanged except CKF_RNG: C_GenerateRandom always works through the shim."""
    rv = int(shim.backend.fn["C_GetTokenInfo"](slot, pinfo))
    if rv == CKR.OK and pinfo != NULL:
        pinfo.flags |= TokenFlag.RNG
    return rv
