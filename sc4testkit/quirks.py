"""CKRs real backends return outside what PKCS#11 v2.40 allows, tolerated by name.

``shim/spec.py`` is the spec and only the spec.  Where a real module returns a value the spec
does not list for a function, and the shim passes it through unchanged, the conformance judge
and the C-ABI fuzzer tolerate exactly that (function, CKR, module) here, each with the reason,
instead of widening the spec table.  Anything else outside the table is a defect.
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


def quirk(fn: str, rv: int, module: str) -> Quirk | None:
    """The named exception that tolerates ``rv`` from ``fn`` over ``module``, if there is one."""
    return next((q for q in QUIRKS if q.fn == fn and q.rv == rv and q.module == module), None)


def violation(fn: str, rv: int, module: str) -> str | None:
    """Why ``rv`` from ``fn`` is wrong, or ``None`` when the spec allows it or a quirk of ``module``
    tolerates it.  Functions the spec does not define are not judged."""
    if fn not in ALLOWED or rv in ALLOWED[fn] or quirk(fn, rv, module) is not None:
        return None
    return f"{fn} returned {name_of(CKR, rv)}, which PKCS#11 v2.40 does not allow for it"
