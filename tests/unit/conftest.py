"""Fixtures of the in-process unit tests: the fake backend built once, reset for every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_backend as fake
import pytest
from unit_stack import FFI, Loaded, Stack, compose

from shim import cabi
from shim.constants import CKM, MechanismFlag
from shim.layers.base import Base


@pytest.fixture(scope="session")
def fake_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.build(tmp_path_factory.mktemp("fake"))


@pytest.fixture
def card(fake_module: Path) -> Iterator[Any]:
    """The fake's control functions, reset: a card that signs with raw CKM_ECDSA only."""
    ctl = FFI.dlopen(str(fake_module))
    ctl.fake_reset()
    ctl.fake_add_mechanism(CKM.ECDSA, 256, 384, MechanismFlag.SIGN | MechanismFlag.HW)
    yield ctl
    ctl.fake_reset()


@pytest.fixture
def base(card: Any, fake_module: Path) -> Iterator[Loaded]:
    b = Base()
    b.load(str(fake_module), frozenset())
    loaded = Loaded(b, b.table())
    assert loaded.call("C_Initialize", cabi.NULL) == 0
    yield loaded
    loaded.call("C_Finalize", cabi.NULL)


@pytest.fixture
def stack(card: Any, fake_module: Path, tmp_path: Path) -> Iterator[Stack]:
    s = compose(fake_module, tmp_path / "audit.jsonl")
    yield s
    s.entries["C_Finalize"](cabi.NULL)
    s.writer.close()
