"""Which CKR each function may return — PKCS#11 v2.40 base spec, section 5 (and 3.0 for C_GetInterface).

Every function may also return the universal values (§5.1: CKR_GENERAL_ERROR, CKR_HOST_MEMORY,
CKR_FUNCTION_FAILED, CKR_OK) and CKR_FUNCTION_NOT_SUPPORTED (§4: a library need not implement
every function); functions with a session add the session/device values (§5.1 second group).
A return outside these sets is a conformance defect, whoever produced it (card or shim).
"""

from __future__ import annotations

from shim.constants import CKR, name_of

R = CKR
UNIVERSAL = {R.OK, R.GENERAL_ERROR, R.HOST_MEMORY, R.FUNCTION_FAILED, R.FUNCTION_NOT_SUPPORTED,
             R.CRYPTOKI_NOT_INITIALIZED, R.ARGUMENTS_BAD}
SESSION = {R.SESSION_HANDLE_INVALID, R.SESSION_CLOSED, R.DEVICE_ERROR, R.DEVICE_MEMORY, R.DEVICE_REMOVED,
           R.TOKEN_NOT_PRESENT}
SLOT = {R.SLOT_ID_INVALID, R.DEVICE_ERROR, R.DEVICE_MEMORY, R.DEVICE_REMOVED, R.TOKEN_NOT_PRESENT,
        R.TOKEN_NOT_RECOGNIZED}
OPERATION = {R.OPERATION_ACTIVE, R.OPERATION_NOT_INITIALIZED, R.FUNCTION_CANCELED, R.USER_NOT_LOGGED_IN}
INIT = {R.KEY_HANDLE_INVALID, R.KEY_TYPE_INCONSISTENT, R.KEY_FUNCTION_NOT_PERMITTED, R.KEY_SIZE_RANGE,
        R.MECHANISM_INVALID, R.MECHANISM_PARAM_INVALID, R.OPERATION_ACTIVE, R.PIN_EXPIRED,
        R.USER_NOT_LOGGED_IN, R.FUNCTION_CANCELED}
OUTPUT = {R.BUFFER_TOO_SMALL, R.DATA_LEN_RANGE, R.DATA_INVALID, R.OPERATION_NOT_INITIALIZED,
          R.FUNCTION_CANCELED, R.USER_NOT_LOGGED_IN}
TEMPLATE = {R.ATTRIBUTE_READ_ONLY, R.ATTRIBUTE_TYPE_INVALID, R.ATTRIBUTE_VALUE_INVALID,
            R.TEMPLATE_INCOMPLETE, R.TEMPLATE_INCONSISTENT, R.CURVE_NOT_SUPPORTED, R.DOMAIN_PARAMS_INVALID,
            R.SESSION_READ_ONLY, R.USER_NOT_LOGGED_IN, R.PIN_EXPIRED, R.OPERATION_ACTIVE, R.ACTION_PROHIBITED}

_SPECIFIC: dict[str, set[CKR]] = {
    "C_Initialize": {R.CANT_LOCK, R.CRYPTOKI_ALREADY_INITIALIZED, R.NEED_TO_CREATE_THREADS},
    "C_Finalize": set(),
    "C_GetInfo": set(),
    "C_GetFunctionList": set(),
    "C_GetInterface": set(),
    "C_GetSlotList": {R.BUFFER_TOO_SMALL},
    "C_GetSlotInfo": {R.SLOT_ID_INVALID, R.DEVICE_ERROR},
    "C_GetTokenInfo": SLOT,
    "C_GetMechanismList": SLOT | {R.BUFFER_TOO_SMALL},
    "C_GetMechanismInfo": SLOT | {R.MECHANISM_INVALID},
    "C_OpenSession": SLOT | {R.SESSION_COUNT, R.SESSION_PARALLEL_NOT_SUPPORTED,
                             R.SESSION_READ_WRITE_SO_EXISTS, R.TOKEN_WRITE_PROTECTED},
    "C_CloseSession": SESSION,
    "C_CloseAllSessions": SLOT,
    "C_GetSessionInfo": SESSION,
    "C_Login": SESSION | {R.OPERATION_NOT_INITIALIZED, R.PIN_INCORRECT, R.PIN_LOCKED, R.SESSION_READ_ONLY_EXISTS,
                          R.USER_ALREADY_LOGGED_IN, R.USER_ANOTHER_ALREADY_LOGGED_IN,
                          R.USER_PIN_NOT_INITIALIZED, R.USER_TOO_MANY_TYPES, R.USER_TYPE_INVALID,
                          R.FUNCTION_CANCELED, R.PIN_EXPIRED},
    "C_Logout": SESSION | {R.USER_NOT_LOGGED_IN},
    "C_CreateObject": SESSION | TEMPLATE | {R.TOKEN_WRITE_PROTECTED},
    "C_CopyObject": SESSION | TEMPLATE | {R.OBJECT_HANDLE_INVALID, R.TOKEN_WRITE_PROTECTED},
    "C_DestroyObject": SESSION | {R.OBJECT_HANDLE_INVALID, R.SESSION_READ_ONLY, R.TOKEN_WRITE_PROTECTED,
                                  R.ACTION_PROHIBITED, R.PIN_EXPIRED, R.USER_NOT_LOGGED_IN},
    "C_GetAttributeValue": SESSION | {R.ATTRIBUTE_SENSITIVE, R.ATTRIBUTE_TYPE_INVALID, R.BUFFER_TOO_SMALL,
                                      R.OBJECT_HANDLE_INVALID},
    "C_FindObjectsInit": SESSION | {R.ATTRIBUTE_TYPE_INVALID, R.ATTRIBUTE_VALUE_INVALID, R.OPERATION_ACTIVE,
                                    R.PIN_EXPIRED},
    "C_FindObjects": SESSION | {R.OPERATION_NOT_INITIALIZED},
    "C_FindObjectsFinal": SESSION | {R.OPERATION_NOT_INITIALIZED},
    "C_DigestInit": SESSION | INIT,
    "C_Digest": SESSION | OUTPUT,
    "C_DigestUpdate": SESSION | {R.OPERATION_NOT_INITIALIZED, R.FUNCTION_CANCELED},
    "C_DigestFinal": SESSION | {R.BUFFER_TOO_SMALL, R.OPERATION_NOT_INITIALIZED, R.FUNCTION_CANCELED},
    "C_SignInit": SESSION | INIT,
    "C_Sign": SESSION | OUTPUT,
    "C_SignUpdate": SESSION | {R.DATA_LEN_RANGE, R.OPERATION_NOT_INITIALIZED, R.USER_NOT_LOGGED_IN,
                               R.FUNCTION_CANCELED},
    "C_SignFinal": SESSION | OUTPUT,
    "C_VerifyInit": SESSION | INIT,
    "C_Verify": SESSION | {R.DATA_INVALID, R.DATA_LEN_RANGE, R.OPERATION_NOT_INITIALIZED, R.SIGNATURE_INVALID,
                           R.SIGNATURE_LEN_RANGE, R.FUNCTION_CANCELED},
    "C_VerifyUpdate": SESSION | {R.DATA_LEN_RANGE, R.OPERATION_NOT_INITIALIZED, R.FUNCTION_CANCELED},
    "C_VerifyFinal": SESSION | {R.DATA_LEN_RANGE, R.OPERATION_NOT_INITIALIZED, R.SIGNATURE_INVALID,
                                R.SIGNATURE_LEN_RANGE, R.FUNCTION_CANCELED},
    "C_GenerateRandom": SESSION | {R.OPERATION_ACTIVE, R.RANDOM_NO_RNG, R.FUNCTION_CANCELED, R.USER_NOT_LOGGED_IN},
    "C_SeedRandom": SESSION | {R.OPERATION_ACTIVE, R.RANDOM_NO_RNG, R.RANDOM_SEED_NOT_SUPPORTED,
                               R.FUNCTION_CANCELED, R.USER_NOT_LOGGED_IN},
    "C_GenerateKeyPair": SESSION | TEMPLATE | INIT | {R.TOKEN_WRITE_PROTECTED},
}


def allowed(fn: str) -> set[int]:
    """The CKRs ``fn`` may return (KeyError for a function the table does not know)."""
    return {int(x) for x in UNIVERSAL | _SPECIFIC[fn]}


def violation(fn: str, rv: int) -> str | None:
    """A message when ``rv`` is not a value ``fn`` may return; ``None`` when it is (or fn is unknown)."""
    if fn not in _SPECIFIC or rv in allowed(fn):
        return None
    return f"{fn} returned {name_of(CKR, rv)}, which PKCS#11 does not allow for it"
