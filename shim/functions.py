"""The PKCS#11 v2.40 function table: names, order and C signatures.

This is the one description of the C ABI.  The build (``shim/_build.py``)
generates the exported C entry points and the cffi declarations from it, and
the base layer (``shim/layers/base.py``) builds one forwarder per entry from it.
The order is the order of ``CK_FUNCTION_LIST`` (after its version field).
"""

from __future__ import annotations

from typing import NamedTuple


class Param(NamedTuple):
    ctype: str
    name: str


class FunctionSpec(NamedTuple):
    name: str
    params: tuple[Param, ...]

    @property
    def c_params(self) -> str:
        return ", ".join(f"{p.ctype} {p.name}" for p in self.params) or "void"

    @property
    def c_args(self) -> str:
        return ", ".join(p.name for p in self.params)


def _f(name: str, *params: str) -> FunctionSpec:
    parsed = []
    for p in params:
        ctype, _, pname = p.rpartition(" ")
        parsed.append(Param(ctype, pname))
    return FunctionSpec(name, tuple(parsed))


_S = "CK_SESSION_HANDLE hSession"
_MECH = "CK_MECHANISM_PTR pMechanism"

FUNCTIONS: tuple[FunctionSpec, ...] = (
    _f("C_Initialize", "CK_VOID_PTR pInitArgs"),
    _f("C_Finalize", "CK_VOID_PTR pReserved"),
    _f("C_GetInfo", "CK_INFO_PTR pInfo"),
    _f("C_GetFunctionList", "CK_FUNCTION_LIST_PTR_PTR ppFunctionList"),
    _f("C_GetSlotList", "CK_BBOOL tokenPresent", "CK_SLOT_ID_PTR pSlotList", "CK_ULONG_PTR pulCount"),
    _f("C_GetSlotInfo", "CK_SLOT_ID slotID", "CK_SLOT_INFO_PTR pInfo"),
    _f("C_GetTokenInfo", "CK_SLOT_ID slotID", "CK_TOKEN_INFO_PTR pInfo"),
    _f("C_GetMechanismList", "CK_SLOT_ID slotID", "CK_MECHANISM_TYPE_PTR pMechanismList",
       "CK_ULONG_PTR pulCount"),
    _f("C_GetMechanismInfo", "CK_SLOT_ID slotID", "CK_MECHANISM_TYPE type", "CK_MECHANISM_INFO_PTR pInfo"),
    _f("C_InitToken", "CK_SLOT_ID slotID", "CK_UTF8CHAR_PTR pPin", "CK_ULONG ulPinLen",
       "CK_UTF8CHAR_PTR pLabel"),
    _f("C_InitPIN", _S, "CK_UTF8CHAR_PTR pPin", "CK_ULONG ulPinLen"),
    _f("C_SetPIN", _S, "CK_UTF8CHAR_PTR pOldPin", "CK_ULONG ulOldLen", "CK_UTF8CHAR_PTR pNewPin",
       "CK_ULONG ulNewLen"),
    _f("C_OpenSession", "CK_SLOT_ID slotID", "CK_FLAGS flags", "CK_VOID_PTR pApplication",
       "CK_NOTIFY Notify", "CK_SESSION_HANDLE_PTR phSession"),
    _f("C_CloseSession", _S),
    _f("C_CloseAllSessions", "CK_SLOT_ID slotID"),
    _f("C_GetSessionInfo", _S, "CK_SESSION_INFO_PTR pInfo"),
    _f("C_GetOperationState", _S, "CK_BYTE_PTR pOperationState", "CK_ULONG_PTR pulOperationStateLen"),
    _f("C_SetOperationState", _S, "CK_BYTE_PTR pOperationState", "CK_ULONG ulOperationStateLen",
       "CK_OBJECT_HANDLE hEncryptionKey", "CK_OBJECT_HANDLE hAuthenticationKey"),
    _f("C_Login", _S, "CK_USER_TYPE userType", "CK_UTF8CHAR_PTR pPin", "CK_ULONG ulPinLen"),
    _f("C_Logout", _S),
    _f("C_CreateObject", _S, "CK_ATTRIBUTE_PTR pTemplate", "CK_ULONG ulCount", "CK_OBJECT_HANDLE_PTR phObject"),
    _f("C_CopyObject", _S, "CK_OBJECT_HANDLE hObject", "CK_ATTRIBUTE_PTR pTemplate", "CK_ULONG ulCount",
       "CK_OBJECT_HANDLE_PTR phNewObject"),
    _f("C_DestroyObject", _S, "CK_OBJECT_HANDLE hObject"),
    _f("C_GetObjectSize", _S, "CK_OBJECT_HANDLE hObject", "CK_ULONG_PTR pulSize"),
    _f("C_GetAttributeValue", _S, "CK_OBJECT_HANDLE hObject", "CK_ATTRIBUTE_PTR pTemplate", "CK_ULONG ulCount"),
    _f("C_SetAttributeValue", _S, "CK_OBJECT_HANDLE hObject", "CK_ATTRIBUTE_PTR pTemplate", "CK_ULONG ulCount"),
    _f("C_FindObjectsInit", _S, "CK_ATTRIBUTE_PTR pTemplate", "CK_ULONG ulCount"),
    _f("C_FindObjects", _S, "CK_OBJECT_HANDLE_PTR phObject", "CK_ULONG ulMaxObjectCount",
       "CK_ULONG_PTR pulObjectCount"),
    _f("C_FindObjectsFinal", _S),
    _f("C_EncryptInit", _S, _MECH, "CK_OBJECT_HANDLE hKey"),
    _f("C_Encrypt", _S, "CK_BYTE_PTR pData", "CK_ULONG ulDataLen", "CK_BYTE_PTR pEncryptedData",
       "CK_ULONG_PTR pulEncryptedDataLen"),
    _f("C_EncryptUpdate", _S, "CK_BYTE_PTR pPart", "CK_ULONG ulPartLen", "CK_BYTE_PTR pEncryptedPart",
       "CK_ULONG_PTR pulEncryptedPartLen"),
    _f("C_EncryptFinal", _S, "CK_BYTE_PTR pLastEncryptedPart", "CK_ULONG_PTR pulLastEncryptedPartLen"),
    _f("C_DecryptInit", _S, _MECH, "CK_OBJECT_HANDLE hKey"),
    _f("C_Decrypt", _S, "CK_BYTE_PTR pEncryptedData", "CK_ULONG ulEncryptedDataLen", "CK_BYTE_PTR pData",
       "CK_ULONG_PTR pulDataLen"),
    _f("C_DecryptUpdate", _S, "CK_BYTE_PTR pEncryptedPart", "CK_ULONG ulEncryptedPartLen", "CK_BYTE_PTR pPart",
       "CK_ULONG_PTR pulPartLen"),
    _f("C_DecryptFinal", _S, "CK_BYTE_PTR pLastPart", "CK_ULONG_PTR pulLastPartLen"),
    _f("C_DigestInit", _S, _MECH),
    _f("C_Digest", _S, "CK_BYTE_PTR pData", "CK_ULONG ulDataLen", "CK_BYTE_PTR pDigest",
       "CK_ULONG_PTR pulDigestLen"),
    _f("C_DigestUpdate", _S, "CK_BYTE_PTR pPart", "CK_ULONG ulPartLen"),
    _f("C_DigestKey", _S, "CK_OBJECT_HANDLE hKey"),
    _f("C_DigestFinal", _S, "CK_BYTE_PTR pDigest", "CK_ULONG_PTR pulDigestLen"),
    _f("C_SignInit", _S, _MECH, "CK_OBJECT_HANDLE hKey"),
    _f("C_Sign", _S, "CK_BYTE_PTR pData", "CK_ULONG ulDataLen", "CK_BYTE_PTR pSignature",
       "CK_ULONG_PTR pulSignatureLen"),
    _f("C_SignUpdate", _S, "CK_BYTE_PTR pPart", "CK_ULONG ulPartLen"),
    _f("C_SignFinal", _S, "CK_BYTE_PTR pSignature", "CK_ULONG_PTR pulSignatureLen"),
    _f("C_SignRecoverInit", _S, _MECH, "CK_OBJECT_HANDLE hKey"),
    _f("C_SignRecover", _S, "CK_BYTE_PTR pData", "CK_ULONG ulDataLen", "CK_BYTE_PTR pSignature",
       "CK_ULONG_PTR pulSignatureLen"),
    _f("C_VerifyInit", _S, _MECH, "CK_OBJECT_HANDLE hKey"),
    _f("C_Verify", _S, "CK_BYTE_PTR pData", "CK_ULONG ulDataLen", "CK_BYTE_PTR pSignature",
       "CK_ULONG ulSignatureLen"),
    _f("C_VerifyUpdate", _S, "CK_BYTE_PTR pPart", "CK_ULONG ulPartLen"),
    _f("C_VerifyFinal", _S, "CK_BYTE_PTR pSignature", "CK_ULONG ulSignatureLen"),
    _f("C_VerifyRecoverInit", _S, _MECH, "CK_OBJECT_HANDLE hKey"),
    _f("C_VerifyRecover", _S, "CK_BYTE_PTR pSignature", "CK_ULONG ulSignatureLen", "CK_BYTE_PTR pData",
       "CK_ULONG_PTR pulDataLen"),
    _f("C_DigestEncryptUpdate", _S, "CK_BYTE_PTR pPart", "CK_ULONG ulPartLen", "CK_BYTE_PTR pEncryptedPart",
       "CK_ULONG_PTR pulEncryptedPartLen"),
    _f("C_DecryptDigestUpdate", _S, "CK_BYTE_PTR pEncryptedPart", "CK_ULONG ulEncryptedPartLen",
       "CK_BYTE_PTR pPart", "CK_ULONG_PTR pulPartLen"),
    _f("C_SignEncryptUpdate", _S, "CK_BYTE_PTR pPart", "CK_ULONG ulPartLen", "CK_BYTE_PTR pEncryptedPart",
       "CK_ULONG_PTR pulEncryptedPartLen"),
    _f("C_DecryptVerifyUpdate", _S, "CK_BYTE_PTR pEncryptedPart", "CK_ULONG ulEncryptedPartLen",
       "CK_BYTE_PTR pPart", "CK_ULONG_PTR pulPartLen"),
    _f("C_GenerateKey", _S, _MECH, "CK_ATTRIBUTE_PTR pTemplate", "CK_ULONG ulCount", "CK_OBJECT_HANDLE_PTR phKey"),
    _f("C_GenerateKeyPair", _S, _MECH, "CK_ATTRIBUTE_PTR pPublicKeyTemplate",
       "CK_ULONG ulPublicKeyAttributeCount", "CK_ATTRIBUTE_PTR pPrivateKeyTemplate",
       "CK_ULONG ulPrivateKeyAttributeCount", "CK_OBJECT_HANDLE_PTR phPublicKey",
       "CK_OBJECT_HANDLE_PTR phPrivateKey"),
    _f("C_WrapKey", _S, _MECH, "CK_OBJECT_HANDLE hWrappingKey", "CK_OBJECT_HANDLE hKey",
       "CK_BYTE_PTR pWrappedKey", "CK_ULONG_PTR pulWrappedKeyLen"),
    _f("C_UnwrapKey", _S, _MECH, "CK_OBJECT_HANDLE hUnwrappingKey", "CK_BYTE_PTR pWrappedKey",
       "CK_ULONG ulWrappedKeyLen", "CK_ATTRIBUTE_PTR pTemplate", "CK_ULONG ulAttributeCount",
       "CK_OBJECT_HANDLE_PTR phKey"),
    _f("C_DeriveKey", _S, _MECH, "CK_OBJECT_HANDLE hBaseKey", "CK_ATTRIBUTE_PTR pTemplate",
       "CK_ULONG ulAttributeCount", "CK_OBJECT_HANDLE_PTR phKey"),
    _f("C_SeedRandom", _S, "CK_BYTE_PTR pSeed", "CK_ULONG ulSeedLen"),
    _f("C_GenerateRandom", _S, "CK_BYTE_PTR RandomData", "CK_ULONG ulRandomLen"),
    _f("C_GetFunctionStatus", _S),
    _f("C_CancelFunction", _S),
    _f("C_WaitForSlotEvent", "CK_FLAGS flags", "CK_SLOT_ID_PTR pSlot", "CK_VOID_PTR pReserved"),
)

BY_NAME: dict[str, FunctionSpec] = {f.name: f for f in FUNCTIONS}
assert len(FUNCTIONS) == 68, "PKCS#11 v2.40 has 68 functions"

# Entries answered in C by the loader stub, never by Python: they must work
# before (and without) the interpreter, and they hand out the stub's own tables.
C_ONLY = frozenset({"C_GetFunctionList"})
