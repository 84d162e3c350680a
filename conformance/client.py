"""The pytest side of :mod:`conformance.worker`: spawn, send, receive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """The worker could not run a request (a crash, or a step it could not express)."""


class Worker:
    """One child process with one loaded module (``label`` is ``shim`` or ``direct``)."""

    def __init__(self, module: str, env: dict[str, str], label: str, timeout: float = 300) -> None:
        self.module, self.label, self.timeout = module, label, timeout
        env = dict(env)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-m", "conformance.worker", module], env=env, cwd=str(ROOT),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise WorkerError(f"{self.label} worker died (exit {self.proc.wait()}): {err[-3000:]}")
        rep: dict[str, Any] = json.loads(line)
        if not rep.get("ok"):
            raise WorkerError(f"{self.label} worker: {rep.get('error')}\n{rep.get('trace', '')}")
        return rep

    def bind(self, bindings: dict[str, Any]) -> None:
        self.request({"op": "bind", "bindings": bindings})

    def avoid(self, module: str) -> list[str]:
        """Step around ``module``'s named behaviours (sc4testkit.quirks); for the direct worker."""
        return list(self.request({"op": "avoid", "module": module})["avoided"])

    def reset(self) -> None:
        self.request({"op": "reset"})

    def run(self, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(self.request({"op": "run", "steps": steps})["results"])

    def threads(self, groups: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return list(self.request({"op": "threads", "groups": groups})["results"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request({"op": "quit"})
            except (WorkerError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
