"""Fixtures of the reliability suite: a private SoftHSM token (whatever --card says:
these tests change tokens, fill disks and kill processes), and figures for the README's Reliability section."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from rel_helpers import FIGURES_ENV, SCALE, Token

from virtualcard.pytest_plugin import make_softhsm


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Token:
    """A SoftHSM token with an EC P-256 (id 01) and an RSA-2048 (id 02) key pair."""
    root = tmp_path_factory.mktemp("rel-softhsm")
    return Token(make_softhsm(root), root)


@pytest.fixture(scope="session", autouse=True)
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests add their figures (calls tried, kill runs, ...) to one JSON file; printed at the end."""
    path = tmp_path_factory.getbasetemp() / "reliability-figures.json"
    saved = os.environ.get(FIGURES_ENV)
    os.environ[FIGURES_ENV] = str(path)
    yield path
    if saved is None:
        os.environ.pop(FIGURES_ENV, None)
    else:
        os.environ[FIGURES_ENV] = saved


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    try:
        base = terminalreporter.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return
    p = base / "reliability-figures.json"
    if p.exists():
        terminalreporter.section(f"reliability figures (SC4_RELIABILITY_SCALE={SCALE:g})")
        for k, v in sorted(json.loads(p.read_text()).items()):
            terminalreporter.write_line(f"{k}: {v}")
