"""Fixtures for tests that load the real shim module into real consumers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sc4testkit.shimenv import ShimProcesses, shim_environment
from shim.locate import module_path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ShimEnv(ShimProcesses):
    """Environment for a consumer process that loads the shim over ``card``."""

    card: Any

    def run_python(self, code: str, *, direct: bool = False, check: bool = True,
                   extra_env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``code`` in a fresh interpreter; ``MODULE`` is the module under test
        (the shim, or the backend itself when ``direct``), ``PIN`` the user PIN."""
        env = dict(self.env, **(extra_env or {}))
        env["P11_MODULE"] = self.card.module if direct else self.module
        env["P11_PIN"] = self.card.pin
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])  # sc4testkit in children
        prelude = "import os\nMODULE = os.environ['P11_MODULE']\nPIN = os.environ['P11_PIN']\n"
        proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"consumer failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def shim_env(card: Any, tmp_path: Path) -> Iterator[ShimEnv]:
    env, audit = shim_environment(tmp_path, card.module, card.env, card.shim_conf)
    yield ShimEnv(module_path(), env, audit, card)
