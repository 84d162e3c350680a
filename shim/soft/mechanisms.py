"""The mechanism table that decides completion: what the card does plus what software adds.

- card mechanisms keep the card's flags (CKF_HW included); signing ones gain
  CKF_VERIFY because verification is completed in software;
- digests MD5/SHA-1/SHA-2 gain CKF_DIGEST (software, no CKF_HW);
- hashed signature mechanisms whose raw form the card signs are added with
  SIGN|VERIFY and the raw form's key sizes (no CKF_HW: hashing is software);
- HMAC mechanisms are added (SIGN|VERIFY, software);
- software CKM_ECDSA_SHA* work (C_SignInit, C_GetMechanismInfo) but are not
  *listed* unless the card has them: pkcs11-provider picks from the list, and
  with CKM_ECDSA_SHA256 listed it signs in several calls (Init, Updates, Final,
  GetOperationState) instead of hashing itself and sending two (Init, Sign), and
  every call through the shim costs an audit record (BENCHMARKS.md, BIND
  section).  No DNSSEC consumer needs them listed (BIND 9.16 admits ECDSA on
  CKM_ECDSA alone);
- ``[compat] advertise_keygen`` (default true): key-pair generation for the
  card's key types is advertised even when the card cannot generate through
  PKCS#11, because BIND 9.16 admits a slot only then; C_GenerateKeyPair still
  goes to the card and returns its own error.
"""

from __future__ import annotations

from shim.constants import CKM, MechanismFlag
from shim.soft.capabilities import Capabilities, MechInfo
from shim.soft.digest import HASHES
from shim.soft.hashsign import HASHED
from shim.soft.hmac import HMACS
from shim.soft.verify import VERIFY_MECHANISMS

F = MechanismFlag
_KEYGEN_FOR = {  # advertised key generation -> the signing mechanism that proves the key type
    CKM.EC_KEY_PAIR_GEN: CKM.ECDSA,
    CKM.RSA_PKCS_KEY_PAIR_GEN: CKM.RSA_PKCS,
    CKM.EC_EDWARDS_KEY_PAIR_GEN: CKM.EDDSA,
}
_EC_FLAGS = F.EC_F_P | F.EC_NAMEDCURVE | F.EC_UNCOMPRESS | F.EC_COMPRESS
UNLISTED = frozenset({CKM.ECDSA_SHA1, CKM.ECDSA_SHA224, CKM.ECDSA_SHA256, CKM.ECDSA_SHA384, CKM.ECDSA_SHA512})


def mechanism_table(caps: Capabilities, slot: int, *, advertise_keygen: bool) -> dict[int, MechInfo]:
    card = caps.mechanisms(slot)
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
    if advertise_keygen:
        for gen, signer in _KEYGEN_FOR.items():
            sig = card.get(signer)
            if gen not in table and sig is not None and sig.flags & F.SIGN:
                table[gen] = MechInfo(sig.min_key, sig.max_key, F.GENERATE_KEY_PAIR | (sig.flags & _EC_FLAGS))
    return table


def listed(caps: Capabilities, slot: int, *, advertise_keygen: bool) -> list[int]:
    """What C_GetMechanismList answers: the table minus unlisted software mechanisms."""
    card = caps.mechanisms(slot)
    return sorted(m for m in mechanism_table(caps, slot, advertise_keygen=advertise_keygen)
                  if m not in UNLISTED or m in card)
