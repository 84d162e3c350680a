"""What real backends do outside PKCS#11 v2.40, tolerated by name.

``shim/spec.py`` is the spec and only the spec.  Where a real module returns a value the spec
does not list for a function, and the shim passes it through unchanged, the conformance judge
and the C-ABI fuzzer tolerate exactly that (function, CKR, module) here, each with the reason,
instead of widening the spec table.  Anything else outside the table is a defect.

A backend may also do something no CKR describes (crash, or break its caller's state), in a
situation the spec answers with a CKR.  Such a :class:`Behaviour` is named here too: a test that
would meet it through the module directly steps around it and says why; through the shim the
call is still made, and the shim must answer it (each behaviour says which test proves that).
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.constants import CKR, name_of
from shim.spec import ALLOWED


@dataclass(frozen=True)
class Quirk:
    fn: str
    rv: CKR
    module: str  # the backend that does it: "softhsm2" or "opensc" (sc4testkit.tokens TokenKind.module)
    why: str


QUIRKS: tuple[Quirk, ...] = (
    # The v2.40 list of C_EncryptInit has no CKR_ARGUMENTS_BAD (the other *Init lists do); SoftHSM
    # checks pMechanism before anything else and answers a NULL one with it.  The fuzzer meets it.
    Quirk("C_EncryptInit", CKR.ARGUMENTS_BAD, "softhsm2", "NULL pMechanism, which the spec's list forgets"),
)


@dataclass(frozen=True)
class Behaviour:
    name: str
    module: str  # sc4testkit.tokens TokenKind.module
    why: str


BEHAVIOURS: tuple[Behaviour, ...] = (
    # Found by the conformance suite's direct worker (libykcs11 2.2.0, Debian 12 and 13), which
    # replays a sequence whose C_VerifyInit the module refused.  Through the shim verification is
    # software: the shim answers CKR_OPERATION_NOT_INITIALIZED itself
    # (tests/shim/test_card_completion.py::test_verify_without_init_is_answered_by_the_shim).
    Behaviour("verify_without_init", "ykcs11",
              "C_Verify, C_VerifyUpdate or C_VerifyFinal without an active verify operation, in a session "
              "that has signed, crash libykcs11 (glibc: double free): it frees the session's OpenSSL "
              "context, which the finished signature already freed"),
    # conformance/tests/test_properties.py::test_buffer_probing... draws no longer input there.  The
    # shim passes the error through: DNS signers hand CKM_ECDSA the hash of the key's own size.
    Behaviour("ecdsa_input_not_truncated", "ykcs11",
              "raw CKM_ECDSA input longer than the key's order (48 bytes to a P-256 key) is not truncated to "
              "its leftmost bits as the mechanism says: libykpiv refuses it before any APDU ('Wrong buffer "
              "size') and C_Sign answers CKR_DEVICE_ERROR"),
    # tests/shim/test_module.py::test_forked_child_reinitialises_and_signs skips with this.
    Behaviour("fork_shares_the_card", "ykcs11",
              "libykcs11 keeps its slots across fork(): a child's C_Initialize reuses the parent's login "
              "state (its C_Login says CKR_USER_ALREADY_LOGGED_IN) and the parent's PC/SC card handle, and "
              "the child's C_Finalize disconnects that handle, so the parent's next C_Sign fails "
              "(CKR_DEVICE_ERROR, SCARD_F_COMM_ERROR): a forked child cannot use the card on its own"),
)


def behaviour(name: str, module: str) -> Behaviour | None:
    """The named behaviour of ``module``, if it has it."""
    return next((b for b in BEHAVIOURS if b.name == name and b.module == module), None)


def quirk(fn: str, rv: int, module: str) -> Quirk | None:
    """The named exception that tolerates ``rv`` from ``fn`` over ``module``, if there is one."""
    return next((q for q in QUIRKS if q.fn == fn and q.rv == rv and q.module == module), None)


def violation(fn: str, rv: int, module: str) -> str | None:
    """Why ``rv`` from ``fn`` is wrong, or ``None`` when the spec allows it or a quirk of ``module``
    tolerates it.  Functions the spec does not define are not judged."""
    if fn not in ALLOWED or rv in ALLOWED[fn] or quirk(fn, rv, module) is not None:
        return None
    return f"{fn} returned {name_of(CKR, rv)}, which PKCS#11 v2.40 does not allow for it"
