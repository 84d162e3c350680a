"""Fixtures for tests that load the real shim module into real consumers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shim.config import dumps as config_dumps
from shim.locate import module_path


@dataclass
class ShimEnv:
    """Environment for a consumer process that loads the shim over ``card``."""

    module: str
    env: dict[str, str]
    audit_log: Path
    card: Any

    def records(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def calls(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("kind") == "call"]

    def run_python(self, code: str, *, direct: bool = False, check: bool = True,
                   extra_env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``code`` in a fresh interpreter; ``MODULE`` is the module under test
        (the shim, or the backend itself when ``direct``), ``PIN`` the user PIN."""
        env = dict(self.env, **(extra_env or {}))
        env["P11_MODULE"] = self.card.module if direct else self.module
        env["P11_PIN"] = self.card.pin
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
        prelude = "import os\nMODULE = os.environ['P11_MODULE']\nPIN = os.environ['P11_PIN']\n"
        proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"consumer failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 120,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, env=dict(self.env, **(extra_env or {})), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def shim_env(card: Any, tmp_path: Path) -> Iterator[ShimEnv]:
    audit = tmp_path / "audit.jsonl"
    conf = tmp_path / "sc4dnssec.toml"
    conf.write_text(config_dumps(card.shim_conf))
    env = dict(os.environ)
    env.update(card.env)
    env.update(SC4DNSSEC_BACKEND=card.module, SC4DNSSEC_AUDIT_LOG=str(audit), SC4DNSSEC_CONF=str(conf))
    yield ShimEnv(module_path(), env, audit, card)
