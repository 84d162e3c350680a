"""HMAC sign/verify with shim session secret keys (CKM_SHA*_HMAC, CKM_MD5_HMAC)."""

from __future__ import annotations

import hmac as _hmac

from shim.constants import CKM, CKR
from shim.errors import PKCS11Error
from shim.soft.digest import Hashing

HMACS: dict[int, str] = {
    CKM.MD5_HMAC: "md5",
    CKM.SHA_1_HMAC: "sha1",
    CKM.SHA224_HMAC: "sha224",
    CKM.SHA256_HMAC: "sha256",
    CKM.SHA384_HMAC: "sha384",
    CKM.SHA512_HMAC: "sha512",
}


class Hmac(Hashing):
    """One HMAC sign or verify operation."""

    def __init__(self, mechanism: int, key: bytes) -> None:
        name = HMACS.get(mechanism)
        if name is None:
            raise PKCS11Error(CKR.MECHANISM_INVALID, "no software HMAC for this mechanism")
        if not key:
            raise PKCS11Error(CKR.KEY_SIZE_RANGE, "empty HMAC key")
        self._h = _hmac.new(key, digestmod=name)

    def verify(self, signature: bytes) -> None:
        if len(signature) != self.size:
            raise PKCS11Error(CKR.SIGNATURE_LEN_RANGE, f"HMAC is {self.size} bytes, got {len(signature)}")
        if not _hmac.compare_digest(self._h.digest(), signature):
            raise PKCS11Error(CKR.SIGNATURE_INVALID, "HMAC mismatch")
