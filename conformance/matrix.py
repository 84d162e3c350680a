"""Per-card result files and the merged consumer-sequence x card matrix (Markdown)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sc4testkit.tokens import KINDS


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
    path.write_text("# Conformance matrix: consumer sequence x card\n\n"
                    "Written by `pytest conformance --card=...` (merging `conformance/results/*.json`).\n\n" + table)
    return table
