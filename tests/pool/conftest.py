"""The cards of sc4testkit.pool, once per module, in a private pcscd."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sc4testkit.pool import PoolCards, started_cards
from virtualcard.harness import HarnessError


@pytest.fixture(scope="module")
def pool_cards() -> Iterator[PoolCards]:
    run = Path(tempfile.mkdtemp(prefix="vcard-p"))  # short: AF_UNIX paths are limited
    try:
        with started_cards(run) as cards:
            yield cards
    except HarnessError as e:
        pytest.skip(f"virtual card stack unavailable: {e}")
    finally:
        shutil.rmtree(run, ignore_errors=True)
