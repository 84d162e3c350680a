"""Where the built module lives (``sc4dnssec module-path``)."""

from __future__ import annotations

from pathlib import Path

from shim._build import STUB_NAME


def module_path() -> str:
    path = Path(__file__).resolve().parent / STUB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build the module with 'pip install .'")
    return str(path)
