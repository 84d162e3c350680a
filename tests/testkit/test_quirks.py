"""Backend quirks (sc4testkit/quirks.py) stay named exceptions, never a second spec table."""

from __future__ import annotations

from sc4testkit import quirks, tokens
from shim import spec
from shim.constants import CKR


def test_every_quirk_is_outside_the_spec_and_names_a_backend_of_the_token_table() -> None:
    modules = {k.module for k in tokens.TOKENS.values()}
    for q in quirks.QUIRKS:
        assert q.fn in spec.ALLOWED and q.rv not in spec.ALLOWED[q.fn], f"{q} is no quirk: the spec allows it"
        assert q.module in modules and q.why


def test_a_quirk_is_tolerated_only_from_its_module() -> None:
    assert quirks.violation("C_EncryptInit", CKR.ARGUMENTS_BAD, "softhsm2") is None
    assert quirks.violation("C_EncryptInit", CKR.ARGUMENTS_BAD, "opensc") is not None
    assert quirks.violation("C_Sign", CKR.PIN_INCORRECT, "softhsm2") is not None
    assert quirks.violation("C_Sign", CKR.BUFFER_TOO_SMALL, "opensc") is None
    assert quirks.violation("C_GetInterface", CKR.OK, "opensc") is None


def test_every_behaviour_names_a_backend_once_and_says_why() -> None:
    modules = {k.module for k in tokens.TOKENS.values()}
    names = [(b.name, b.module) for b in quirks.BEHAVIOURS]
    assert len(names) == len(set(names))
    for b in quirks.BEHAVIOURS:
        assert b.module in modules and b.why
        assert quirks.behaviour(b.name, b.module) is b
        assert all(quirks.behaviour(b.name, m) is None for m in modules - {b.module})
