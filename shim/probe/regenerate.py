"""``python -m shim.probe.regenerate [SEQUENCES_DIR]``: rewrite ``requirements_table.py`` from
the conformance sequences (after a sequence changes; ``tests/probe`` fails until then)."""

from __future__ import annotations

import sys
from pathlib import Path

from shim.probe.requirements import SEQUENCES, TABLE, derive_all, render_module, table_doc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    TABLE.write_text(render_module(table_doc(derive_all(Path(args[0]) if args else SEQUENCES))))
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
