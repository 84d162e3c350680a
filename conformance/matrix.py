"""Per-card result files and the merged consumer-sequence x card matrix (Markdown).

A test run writes only to its output directory (``--conformance-out``, default
``build/conformance``): ``results/<card>.json`` and the merged ``MATRIX.md``.  The committed
matrix (``conformance/MATRIX.md`` and ``conformance/results/*.json``) changes only through the
explicit refresh command::

    python -m conformance.matrix --refresh [OUT_DIR]      (or: tox -e conformance-matrix)

which copies OUT_DIR's result files over the committed ones and rewrites the committed matrix.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from sc4testkit.tokens import KINDS

HERE = Path(__file__).resolve().parent
COMMITTED = HERE  # MATRIX.md and results/ as committed
DEFAULT_OUT = HERE.parent / "build" / "conformance"


def write_results(directory: Path, card: str, results: dict[str, dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{card}.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return path


def load_all(directory: Path) -> dict[str, dict[str, dict[str, Any]]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def render(all_results: dict[str, dict[str, dict[str, Any]]]) -> str:
    cards = [c for c in KINDS if c in all_results] + sorted(set(all_results) - set(KINDS))
    rows = sorted({name for r in all_results.values() for name in r})
    lines = ["| sequence | " + " | ".join(cards) + " |", "|---" * (len(cards) + 1) + "|"]
    for name in rows:
        cells = []
        for c in cards:
            r = all_results[c].get(name)
            if r is None:
                cells.append("")
            elif r["status"] == "pass":
                cells.append("pass")
            elif r["status"] == "skip":
                cells.append(f"skip ({r.get('why', '')})")
            else:
                cells.append(f"**FAIL** {r.get('first_failure', '')}".replace("|", "/"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_matrix(path: Path, directory: Path) -> str:
    table = render(load_all(directory))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Conformance matrix: consumer sequence x card\n\n"
                    "Refreshed by `python -m conformance.matrix --refresh` from the per-card results of\n"
                    "`pytest conformance --card=...` (`conformance/results/*.json`).\n\n" + table)
    return table


def refresh(out: Path, committed: Path = COMMITTED) -> list[str]:
    """Copy ``out``'s per-card results over the committed ones and rewrite the committed matrix.

    Cards without a fresh result keep their committed file.  Returns the cards refreshed."""
    fresh = sorted((out / "results").glob("*.json"))
    if not fresh:
        raise FileNotFoundError(f"no results in {out / 'results'}: run `tox -e conformance -- --card=...` first")
    (committed / "results").mkdir(parents=True, exist_ok=True)
    for p in fresh:
        shutil.copyfile(p, committed / "results" / p.name)
    write_matrix(committed / "MATRIX.md", committed / "results")
    return [p.stem for p in fresh]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.matrix", description=__doc__.split("\n\n")[0])
    ap.add_argument("--refresh", action="store_true", help="update conformance/MATRIX.md and results/*.json")
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"a run's output dir ({DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if not args.refresh:
        sys.stdout.write(render(load_all(args.out / "results")))
        return 0
    cards = refresh(args.out)
    print(f"refreshed {COMMITTED / 'MATRIX.md'} from {', '.join(cards)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
