"""Helpers of the probe tests (a module of its own: conftest modules of two suites collide)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shim.config import dumps as config_dumps

ProbeRun = Callable[..., dict[str, Any]]


def write_config(path: Path, card: Any, audit: Path, **tables: dict[str, Any]) -> Path:
    conf: dict[str, Any] = {"backend": card.module, "audit": {"path": str(audit)}}
    for k, v in card.shim_conf.items():
        conf[k] = dict(v)
    for k, v in tables.items():
        conf.setdefault(k, {}).update(v)
    path.write_text(config_dumps(conf))
    return path
