"""Hash-then-sign: the hashed signature mechanisms a card lacks, on top of its raw ones.

CKM_ECDSA_SHA* becomes software hash + raw CKM_ECDSA on the card;
CKM_SHA*_RSA_PKCS becomes software hash + DigestInfo + raw CKM_RSA_PKCS;
CKM_SHA*_RSA_PKCS_PSS becomes software hash + raw CKM_RSA_PKCS_PSS (when the
card has it).  The private key operation stays on the card; multi-part
C_SignUpdate/C_SignFinal are completed here because the hashing is.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

from shim.constants import CKG, CKM, CKR
from shim.errors import PKCS11Error
from shim.spec import DIGEST_INFO_PREFIX


class Hashed(NamedTuple):
    hash: str  # hashlib name
    raw: int  # the raw mechanism that signs the (encoded) hash


HASHED: dict[int, Hashed] = {
    CKM.ECDSA_SHA1: Hashed("sha1", CKM.ECDSA),
    CKM.ECDSA_SHA224: Hashed("sha224", CKM.ECDSA),
    CKM.ECDSA_SHA256: Hashed("sha256", CKM.ECDSA),
    CKM.ECDSA_SHA384: Hashed("sha384", CKM.ECDSA),
    CKM.ECDSA_SHA512: Hashed("sha512", CKM.ECDSA),
    CKM.MD5_RSA_PKCS: Hashed("md5", CKM.RSA_PKCS),
    CKM.SHA1_RSA_PKCS: Hashed("sha1", CKM.RSA_PKCS),
    CKM.SHA224_RSA_PKCS: Hashed("sha224", CKM.RSA_PKCS),
    CKM.SHA256_RSA_PKCS: Hashed("sha256", CKM.RSA_PKCS),
    CKM.SHA384_RSA_PKCS: Hashed("sha384", CKM.RSA_PKCS),
    CKM.SHA512_RSA_PKCS: Hashed("sha512", CKM.RSA_PKCS),
    CKM.SHA1_RSA_PKCS_PSS: Hashed("sha1", CKM.RSA_PKCS_PSS),
    CKM.SHA224_RSA_PKCS_PSS: Hashed("sha224", CKM.RSA_PKCS_PSS),
    CKM.SHA256_RSA_PKCS_PSS: Hashed("sha256", CKM.RSA_PKCS_PSS),
    CKM.SHA384_RSA_PKCS_PSS: Hashed("sha384", CKM.RSA_PKCS_PSS),
    CKM.SHA512_RSA_PKCS_PSS: Hashed("sha512", CKM.RSA_PKCS_PSS),
}

HASH_OF_MECH: dict[int, str] = {
    CKM.MD5: "md5", CKM.SHA_1: "sha1", CKM.SHA224: "sha224", CKM.SHA256: "sha256",
    CKM.SHA384: "sha384", CKM.SHA512: "sha512",
}
HASH_OF_MGF: dict[int, str] = {
    CKG.MGF1_SHA1: "sha1", CKG.MGF1_SHA224: "sha224", CKG.MGF1_SHA256: "sha256",
    CKG.MGF1_SHA384: "sha384", CKG.MGF1_SHA512: "sha512",
}


def digest_info(hash_name: str, digest: bytes) -> bytes:
    return DIGEST_INFO_PREFIX[hash_name] + digest


class PssParams(NamedTuple):
    hash: str
    mgf_hash: str
    salt_len: int


def parse_pss(parameter: bytes) -> PssParams:
    """CK_RSA_PKCS_PSS_PARAMS: three CK_ULONGs (native size and order)."""
    size = struct.calcsize("=LLL") if struct.calcsize("L") == 4 else struct.calcsize("=QQQ")
    if len(parameter) != size:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "CK_RSA_PKCS_PSS_PARAMS of the wrong size")
    fmt = "=QQQ" if size == 24 else "=LLL"
    hash_alg, mgf, slen = struct.unpack(fmt, parameter)
    if hash_alg not in HASH_OF_MECH or mgf not in HASH_OF_MGF:
        raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "unsupported PSS hash or MGF")
    return PssParams(HASH_OF_MECH[hash_alg], HASH_OF_MGF[mgf], int(slen))


class HashThenSign:
    """Software half of a hash-then-sign operation; the card signs :meth:`to_sign`."""

    on_card = False

    def __init__(self, mechanism: int, parameter: bytes) -> None:
        spec = HASHED[mechanism]
        self.mechanism = mechanism
        self.spec = spec
        self.parameter = parameter
        if spec.raw == CKM.RSA_PKCS_PSS:
            pss = parse_pss(parameter)
            if pss.hash != spec.hash:
                raise PKCS11Error(CKR.MECHANISM_PARAM_INVALID, "PSS hashAlg differs from the mechanism's hash")
        self._h = hashlib.new(spec.hash)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def to_sign(self, more: bytes = b"") -> bytes:
        """What the raw card mechanism signs, for the input so far plus ``more``."""
        h = self._h.copy()
        h.update(more)
        digest = h.digest()
        if self.spec.raw == CKM.RSA_PKCS:
            return digest_info(self.spec.hash, digest)
        return digest
