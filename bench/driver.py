"""The C consumer (p11drive.c), compiled at bench time against the shim's own header."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from shim._build import C_DIR, function_list_struct

HERE = Path(__file__).resolve().parent


def build(work: Path) -> Path:
    """gcc -O2; the CK_FUNCTION_LIST struct comes from shim/functions.py (one table)."""
    header = work / "p11drive.h"
    header.write_text((C_DIR / "cryptoki.h").read_text() + function_list_struct())
    exe = work / "p11drive"
    subprocess.run(["gcc", "-O2", "-Wall", "-include", str(header), "-o", str(exe), str(HERE / "p11drive.c"),
                    "-ldl", "-lpthread"], check=True, capture_output=True, text=True)
    return exe


def run(exe: Path, args: list[str], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"p11drive {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
