"""The shim over a backend, for child processes: the one harness the suites build on.

A test never loads the shim in its own process (the shim embeds Python; a crash must fail a
test, not the session).  It runs consumers as children with an environment that names the
backend module, the shim's configuration file and its audit log; :func:`shim_environment`
builds that environment and :class:`ShimProcesses` runs children in it and reads the audit log.
The suites subclass it with what they add (the card under test, a client protocol).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shim.config import dumps as config_dumps


def shim_environment(workdir: Path, backend: str, backend_env: Mapping[str, str],
                     conf: Mapping[str, Any]) -> tuple[dict[str, str], Path]:
    """``os.environ`` plus what a child needs to load the shim over ``backend``: the backend's own
    environment, ``workdir/sc4dnssec.toml`` written from ``conf``, and the audit log
    ``workdir/audit.jsonl`` (returned with the environment)."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf_path = workdir / "sc4dnssec.toml"
    conf_path.write_text(config_dumps(dict(conf)))
    audit = workdir / "audit.jsonl"
    env = {**os.environ, **backend_env, "SC4DNSSEC_BACKEND": backend, "SC4DNSSEC_AUDIT_LOG": str(audit),
           "SC4DNSSEC_CONF": str(conf_path)}
    return env, audit


@dataclass
class ShimProcesses:
    """Child processes that load the shim (``module``) in ``env``, and the audit log they write."""

    module: str
    env: dict[str, str]
    audit_log: Path

    def records(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def calls(self, fn: str | None = None) -> list[dict[str, Any]]:
        """The call records, of ``fn`` only when given."""
        return [r for r in self.records() if r.get("kind") == "call" and (fn is None or r.get("fn") == fn)]

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 300,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a consumer (``pkcs11-tool`` ...) in the shim's environment; a failure raises when ``check``."""
        proc = subprocess.run(argv, env=dict(self.env, **(extra_env or {})), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc
