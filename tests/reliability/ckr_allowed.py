"""Which CK_RVs PKCS#11 v2.40 allows each function to return.

Transcribed once from the per-function "Return values" lists of PKCS#11 Base
Specification v2.40 (plus errata 01), section 5, keyed by the names in
``shim.functions``.  Three rules of section 5.1 hold for every function and are
added here rather than repeated in each list:

* 5.1.1/5.1.6: CKR_OK, CKR_GENERAL_ERROR, CKR_HOST_MEMORY, CKR_FUNCTION_FAILED,
  CKR_ARGUMENTS_BAD; and CKR_FUNCTION_NOT_SUPPORTED (5.1.6: "even unsupported
  functions ... should have a stub ... that returns CKR_FUNCTION_NOT_SUPPORTED");
* 5.1.2: every function except C_Initialize/C_GetFunctionList may return
  CKR_CRYPTOKI_NOT_INITIALIZED;
* 5.1.3/5.1.4: a function taking a session may return the session-handle and
  token errors (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_DEVICE_REMOVED,
  CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_TOKEN_NOT_PRESENT); one taking a slot the
  slot/token errors (CKR_SLOT_ID_INVALID, CKR_DEVICE_*, CKR_TOKEN_NOT_PRESENT,
  CKR_TOKEN_NOT_RECOGNIZED).
"""

from __future__ import annotations

from shim.constants import CKR
from shim.functions import BY_NAME, FUNCTIONS

UNIVERSAL = frozenset({CKR.OK, CKR.GENERAL_ERROR, CKR.HOST_MEMORY, CKR.FUNCTION_FAILED, CKR.ARGUMENTS_BAD,
                       CKR.FUNCTION_NOT_SUPPORTED})
SESSION = frozenset({CKR.SESSION_HANDLE_INVALID, CKR.SESSION_CLOSED, CKR.DEVICE_REMOVED, CKR.DEVICE_ERROR,
                     CKR.DEVICE_MEMORY, CKR.TOKEN_NOT_PRESENT})
SLOT = frozenset({CKR.SLOT_ID_INVALID, CKR.DEVICE_ERROR, CKR.DEVICE_MEMORY, CKR.DEVICE_REMOVED,
                  CKR.TOKEN_NOT_PRESENT, CKR.TOKEN_NOT_RECOGNIZED})


def _s(*names: str) -> frozenset[CKR]:
    return frozenset(CKR[n] for n in names)


_CRYPT_INIT = _s("FUNCTION_CANCELED", "KEY_FUNCTION_NOT_PERMITTED", "KEY_HANDLE_INVALID", "KEY_SIZE_RANGE",
                 "KEY_TYPE_INCONSISTENT", "MECHANISM_INVALID", "MECHANISM_PARAM_INVALID", "OPERATION_ACTIVE",
                 "PIN_EXPIRED", "USER_NOT_LOGGED_IN")
_OP = _s("FUNCTION_CANCELED", "OPERATION_NOT_INITIALIZED")
_ENC = _OP | _s("BUFFER_TOO_SMALL", "DATA_INVALID", "DATA_LEN_RANGE")
_DEC = _OP | _s("BUFFER_TOO_SMALL", "ENCRYPTED_DATA_INVALID", "ENCRYPTED_DATA_LEN_RANGE", "USER_NOT_LOGGED_IN")
_SIGN = _OP | _s("BUFFER_TOO_SMALL", "DATA_INVALID", "DATA_LEN_RANGE", "USER_NOT_LOGGED_IN", "FUNCTION_REJECTED")
_VERIFY = _OP | _s("DATA_INVALID", "DATA_LEN_RANGE", "SIGNATURE_INVALID", "SIGNATURE_LEN_RANGE")
_TEMPLATE = _s("ATTRIBUTE_READ_ONLY", "ATTRIBUTE_TYPE_INVALID", "ATTRIBUTE_VALUE_INVALID", "CURVE_NOT_SUPPORTED",
               "DOMAIN_PARAMS_INVALID", "PIN_EXPIRED", "SESSION_READ_ONLY", "TEMPLATE_INCOMPLETE",
               "TEMPLATE_INCONSISTENT", "TOKEN_WRITE_PROTECTED", "USER_NOT_LOGGED_IN")
_KEYGEN = _TEMPLATE | _s("FUNCTION_CANCELED", "MECHANISM_INVALID", "MECHANISM_PARAM_INVALID", "OPERATION_ACTIVE")
_PIN = _s("FUNCTION_CANCELED", "PIN_INVALID", "PIN_LEN_RANGE", "SESSION_READ_ONLY", "TOKEN_WRITE_PROTECTED",
          "USER_NOT_LOGGED_IN")
_DUAL = _s("BUFFER_TOO_SMALL", "DATA_LEN_RANGE", "ENCRYPTED_DATA_INVALID", "ENCRYPTED_DATA_LEN_RANGE",
           "FUNCTION_CANCELED", "OPERATION_NOT_INITIALIZED", "USER_NOT_LOGGED_IN")

SPECIFIC: dict[str, frozenset[CKR]] = {
    "C_Initialize": _s("CANT_LOCK", "CRYPTOKI_ALREADY_INITIALIZED", "NEED_TO_CREATE_THREADS"),
    "C_Finalize": frozenset(),
    "C_GetInfo": frozenset(),
    "C_GetFunctionList": frozenset(),
    "C_GetSlotList": _s("BUFFER_TOO_SMALL"),
    "C_GetSlotInfo": frozenset(),
    "C_GetTokenInfo": frozenset(),
    "C_GetMechanismList": _s("BUFFER_TOO_SMALL"),
    "C_GetMechanismInfo": _s("MECHANISM_INVALID"),
    "C_InitToken": _s("FUNCTION_CANCELED", "PIN_INCORRECT", "PIN_LOCKED", "SESSION_EXISTS",
                      "TOKEN_WRITE_PROTECTED"),
    "C_InitPIN": _PIN,
    "C_SetPIN": _PIN | _s("PIN_INCORRECT", "PIN_LOCKED"),
    "C_OpenSession": _s("SESSION_COUNT", "SESSION_PARALLEL_NOT_SUPPORTED", "SESSION_READ_WRITE_SO_EXISTS",
                        "TOKEN_WRITE_PROTECTED"),
    "C_CloseSession": frozenset(),
    "C_CloseAllSessions": frozenset(),
    "C_GetSessionInfo": frozenset(),
    "C_GetOperationState": _s("BUFFER_TOO_SMALL", "OPERATION_NOT_INITIALIZED", "STATE_UNSAVEABLE"),
    "C_SetOperationState": _s("KEY_CHANGED", "KEY_NEEDED", "KEY_NOT_NEEDED", "SAVED_STATE_INVALID"),
    "C_Login": _s("FUNCTION_CANCELED", "OPERATION_NOT_INITIALIZED", "PIN_INCORRECT", "PIN_LOCKED",
                  "SESSION_READ_ONLY_EXISTS", "USER_ALREADY_LOGGED_IN", "USER_ANOTHER_ALREADY_LOGGED_IN",
                  "USER_PIN_NOT_INITIALIZED", "USER_TOO_MANY_TYPES", "USER_TYPE_INVALID"),
    "C_Logout": _s("USER_NOT_LOGGED_IN"),
    "C_CreateObject": _TEMPLATE,
    "C_CopyObject": _TEMPLATE | _s("ACTION_PROHIBITED", "OBJECT_HANDLE_INVALID"),
    "C_DestroyObject": _s("ACTION_PROHIBITED", "OBJECT_HANDLE_INVALID", "PIN_EXPIRED", "SESSION_READ_ONLY",
                          "TOKEN_WRITE_PROTECTED"),
    "C_GetObjectSize": _s("INFORMATION_SENSITIVE", "OBJECT_HANDLE_INVALID"),
    "C_GetAttributeValue": _s("ATTRIBUTE_SENSITIVE", "ATTRIBUTE_TYPE_INVALID", "BUFFER_TOO_SMALL",
                              "OBJECT_HANDLE_INVALID"),
    "C_SetAttributeValue": _TEMPLATE | _s("ACTION_PROHIBITED", "OBJECT_HANDLE_INVALID"),
    "C_FindObjectsInit": _s("ATTRIBUTE_TYPE_INVALID", "ATTRIBUTE_VALUE_INVALID", "OPERATION_ACTIVE",
                            "PIN_EXPIRED"),
    "C_FindObjects": _s("OPERATION_NOT_INITIALIZED"),
    "C_FindObjectsFinal": _s("OPERATION_NOT_INITIALIZED"),
    "C_EncryptInit": _CRYPT_INIT,
    "C_Encrypt": _ENC,
    "C_EncryptUpdate": _ENC,
    "C_EncryptFinal": _ENC,
    "C_DecryptInit": _CRYPT_INIT,
    "C_Decrypt": _DEC,
    "C_DecryptUpdate": _DEC,
    "C_DecryptFinal": _DEC,
    "C_DigestInit": _s("FUNCTION_CANCELED", "MECHANISM_INVALID", "MECHANISM_PARAM_INVALID", "OPERATION_ACTIVE",
                       "PIN_EXPIRED", "USER_NOT_LOGGED_IN"),
    "C_Digest": _OP | _s("BUFFER_TOO_SMALL"),
    "C_DigestUpdate": _OP,
    "C_DigestKey": _OP | _s("KEY_HANDLE_INVALID", "KEY_INDIGESTIBLE", "KEY_SIZE_RANGE"),
    "C_DigestFinal": _OP | _s("BUFFER_TOO_SMALL"),
    "C_SignInit": _CRYPT_INIT,
    "C_Sign": _SIGN,
    "C_SignUpdate": _SIGN - _s("BUFFER_TOO_SMALL", "DATA_INVALID", "FUNCTION_REJECTED"),
    "C_SignFinal": _SIGN,
    "C_SignRecoverInit": _CRYPT_INIT,
    "C_SignRecover": _SIGN,
    "C_VerifyInit": _CRYPT_INIT,
    "C_Verify": _VERIFY,
    "C_VerifyUpdate": _VERIFY - _s("SIGNATURE_INVALID", "SIGNATURE_LEN_RANGE", "DATA_INVALID"),
    "C_VerifyFinal": _VERIFY,
    "C_VerifyRecoverInit": _CRYPT_INIT,
    "C_VerifyRecover": _VERIFY | _s("BUFFER_TOO_SMALL"),
    "C_DigestEncryptUpdate": _DUAL,
    "C_DecryptDigestUpdate": _DUAL,
    "C_SignEncryptUpdate": _DUAL,
    "C_DecryptVerifyUpdate": _DUAL,
    "C_GenerateKey": _KEYGEN,
    "C_GenerateKeyPair": _KEYGEN,
    "C_WrapKey": _s("BUFFER_TOO_SMALL", "FUNCTION_CANCELED", "KEY_HANDLE_INVALID", "KEY_NOT_WRAPPABLE",
                    "KEY_SIZE_RANGE", "KEY_UNEXTRACTABLE", "MECHANISM_INVALID", "MECHANISM_PARAM_INVALID",
                    "OPERATION_ACTIVE", "PIN_EXPIRED", "USER_NOT_LOGGED_IN", "WRAPPING_KEY_HANDLE_INVALID",
                    "WRAPPING_KEY_SIZE_RANGE", "WRAPPING_KEY_TYPE_INCONSISTENT"),
    "C_UnwrapKey": _TEMPLATE | _s("BUFFER_TOO_SMALL", "FUNCTION_CANCELED", "MECHANISM_INVALID",
                                  "MECHANISM_PARAM_INVALID", "OPERATION_ACTIVE", "UNWRAPPING_KEY_HANDLE_INVALID",
                                  "UNWRAPPING_KEY_SIZE_RANGE", "UNWRAPPING_KEY_TYPE_INCONSISTENT",
                                  "WRAPPED_KEY_INVALID", "WRAPPED_KEY_LEN_RANGE"),
    "C_DeriveKey": _TEMPLATE | _s("FUNCTION_CANCELED", "KEY_HANDLE_INVALID", "KEY_SIZE_RANGE",
                                  "KEY_TYPE_INCONSISTENT", "MECHANISM_INVALID", "MECHANISM_PARAM_INVALID",
                                  "OPERATION_ACTIVE"),
    "C_SeedRandom": _s("FUNCTION_CANCELED", "OPERATION_ACTIVE", "RANDOM_SEED_NOT_SUPPORTED", "RANDOM_NO_RNG",
                       "USER_NOT_LOGGED_IN"),
    "C_GenerateRandom": _s("FUNCTION_CANCELED", "OPERATION_ACTIVE", "RANDOM_NO_RNG", "USER_NOT_LOGGED_IN"),
    "C_GetFunctionStatus": _s("FUNCTION_NOT_PARALLEL"),
    "C_CancelFunction": _s("FUNCTION_NOT_PARALLEL"),
    "C_WaitForSlotEvent": _s("NO_EVENT"),
}
assert SPECIFIC.keys() == BY_NAME.keys(), set(SPECIFIC) ^ set(BY_NAME)


def _allowed(name: str) -> frozenset[CKR]:
    spec = BY_NAME[name]
    out = set(UNIVERSAL | SPECIFIC[name])
    if name not in ("C_Initialize", "C_GetFunctionList"):
        out.add(CKR.CRYPTOKI_NOT_INITIALIZED)
    ctypes = {p.ctype for p in spec.params}
    if "CK_SESSION_HANDLE" in ctypes:
        out |= SESSION
    if "CK_SLOT_ID" in ctypes:
        out |= SLOT
    return frozenset(out)


ALLOWED: dict[str, frozenset[CKR]] = {f.name: _allowed(f.name) for f in FUNCTIONS}


def allowed(name: str, rv: int) -> bool:
    return rv in ALLOWED[name]
