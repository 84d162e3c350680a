"""The matrix: runs write their own output directory; only --refresh updates the committed one."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance import matrix


def test_refresh_copies_fresh_columns_and_keeps_the_others(tmp_path: Path) -> None:
    out, committed = tmp_path / "out", tmp_path / "committed"
    matrix.write_results(committed / "results", "virtual", {"knot-sign": {"status": "pass"}})
    matrix.write_results(committed / "results", "softhsm", {"knot-sign": {"status": "fail", "first_failure": "x"}})
    matrix.write_results(out / "results", "softhsm", {"knot-sign": {"status": "pass"}})
    assert matrix.refresh(out, committed) == ["softhsm"]
    text = (committed / "MATRIX.md").read_text()
    assert "| sequence | softhsm | virtual |" in text  # token-table order
    assert "| knot-sign | pass | pass |" in text


def test_refresh_without_results_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tox -e conformance"):
        matrix.refresh(tmp_path, tmp_path / "committed")


def test_the_default_output_is_outside_the_committed_files() -> None:
    assert matrix.DEFAULT_OUT.parts[-2:] == ("build", "conformance")
    assert matrix.COMMITTED not in matrix.DEFAULT_OUT.parents
