"""Fixtures of the conformance suite: the shim and direct workers over ``card``, bindings,
hypothesis profiles, and the matrix written at the end of the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from conformance import matrix
from conformance.client import Worker
from conformance.replay import discover
from sc4testkit.shimenv import shim_environment
from sc4testkit.tokens import TOKENS
from shim.locate import module_path

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=8, deadline=None, suppress_health_check=_SUPPRESS,
                          stateful_step_count=25)
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=_SUPPRESS,
                          stateful_step_count=40)
settings.register_profile("thorough", max_examples=200, deadline=None, suppress_health_check=_SUPPRESS,
                          stateful_step_count=80)
settings.load_profile(os.environ.get("SC4DNSSEC_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") or
                                     os.environ.get("SC4_CI") else "dev"))
RESULTS: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("conformance")
    g.addoption("--conformance-out", default=str(matrix.DEFAULT_OUT),
                help="where this run writes results/<card>.json and the merged MATRIX.md (never the "
                     "committed matrix: `python -m conformance.matrix --refresh` updates that)")


@pytest.fixture(scope="session")
def shim_audit(card: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    return shim_environment(tmp_path_factory.mktemp("conformance-shim"), card.module, card.env, card.shim_conf)


@pytest.fixture(scope="session")
def bindings(card: Any) -> dict[str, Any]:
    """Slot, key labels/ids and public values, read from the card directly (not through the shim)."""
    w = Worker(card.module, dict(os.environ, **card.env), "direct")
    try:
        found = discover(w, card.token_label, card.pin, {k: (v.label, v.id) for k, v in card.keys.items()})
    finally:
        w.close()
    found["card.module"] = TOKENS[card.kind].module  # whose named quirks the judge tolerates
    return found


@pytest.fixture(scope="session")
def shim_worker(card: Any, shim_audit: tuple[dict[str, str], Path], bindings: dict[str, Any]) -> Iterator[Worker]:
    w = Worker(module_path(), shim_audit[0], "shim")
    w.bind(bindings)
    yield w
    w.close()


@pytest.fixture(scope="session")
def direct_worker(card: Any, bindings: dict[str, Any]) -> Iterator[Worker]:
    w = Worker(card.module, dict(os.environ, **card.env), "direct")
    w.bind(bindings)
    w.avoid(TOKENS[card.kind].module)
    yield w
    w.close()


@pytest.fixture
def shim(shim_worker: Worker) -> Iterator[Worker]:
    """The shim worker, uninitialised and without handles before and after each test."""
    finalize = [{"fn": "C_Finalize", "args": {}}]
    shim_worker.run(finalize)
    shim_worker.reset()
    yield shim_worker
    if shim_worker.proc.poll() is None:
        shim_worker.run(finalize)
        shim_worker.reset()


@pytest.fixture
def direct(direct_worker: Worker) -> Iterator[Worker]:
    finalize = [{"fn": "C_Finalize", "args": {}}]
    direct_worker.run(finalize)
    direct_worker.reset()
    yield direct_worker
    direct_worker.run(finalize)
    direct_worker.reset()


@pytest.fixture(scope="session")
def matrix_results() -> dict[str, dict[str, Any]]:
    return RESULTS


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not RESULTS:
        return
    card = str(config.getoption("--card"))
    out_dir = Path(str(config.getoption("--conformance-out")))
    matrix.write_results(out_dir / "results", card, RESULTS)
    out = out_dir / "MATRIX.md"
    table = matrix.write_matrix(out, out_dir / "results")
    terminalreporter.section("conformance matrix (consumer sequence x card)")
    terminalreporter.write(table)
    terminalreporter.write_line(f"written to {out}")
