"""Host-side driver for the Debian 13 root that runs stock BIND 9.20 + pkcs11-provider.

Shared by the BIND tests (tests/bind) and the BIND benchmark (bench/bind.py): the root itself
(:class:`Trixie`) and the shim built and installed in it (:func:`install_shim`).

Every command goes through ``ci/lib/trixie.sh run``: a private mount namespace per command (so no
mount outlives it), the given directories bind-mounted at the same path inside the root, and an
environment that is exactly what the caller passes (OPENSSL_CONF is scoped to the signing
processes, never set for dig). On a Debian 13 host the "root" is ``/`` and no chroot is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: ci/ scripts and the source to install
TRIXIE_SH = REPO / "ci" / "lib" / "trixie.sh"
DEBIAN13_ROOT = REPO / "ci" / "debian13-root"


class Missing(RuntimeError):
    """A prerequisite of the BIND tests is missing; the message names it."""


def check_host() -> None:
    """The host-side prerequisites, each named when missing."""
    if os.geteuid() != 0:
        raise Missing("the BIND tests need root (chroot, mount namespaces, debootstrap): run ci/test as root")
    for tool in ("unshare", "chroot", "mount", "bash"):
        if shutil.which(tool) is None:
            raise Missing(f"the BIND tests need `{tool}` on the host (util-linux/coreutils)")


@dataclass
class Result:
    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\n-> exit {self.returncode} after {self.seconds:.2f} s\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


class CommandFailed(AssertionError):
    pass


@dataclass
class Trixie:
    """The Debian 13 root and the host directories shared into it (at the same paths)."""

    root: str
    binds: list[str] = field(default_factory=list)

    @classmethod
    def ensure(cls, binds: Sequence[str] = ()) -> Trixie:
        """Builds or reuses the root (ci/debian13-root; progress goes to the terminal)."""
        check_host()
        if not DEBIAN13_ROOT.exists():
            raise Missing(f"{DEBIAN13_ROOT} is missing")
        proc = subprocess.run([str(DEBIAN13_ROOT)], stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        if proc.returncode != 0:
            raise Missing(
                f"ci/debian13-root failed (exit {proc.returncode}): no Debian 13 root with "
                "BIND 9.20 + pkcs11-provider; see its messages above"
            )
        return cls(root=proc.stdout.strip().splitlines()[-1], binds=list(binds))

    @property
    def chrooted(self) -> bool:
        return self.root != "/"

    def argv(
        self, cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> list[str]:
        argv = [str(TRIXIE_SH), "run"]
        for b in self.binds:
            argv += ["-b", b]
        if cwd is not None:
            argv += ["-C", str(cwd)]
        for k, v in (env or {}).items():
            argv.append(f"{k}={v}")
        argv.append("--")
        argv += [str(c) for c in cmd]
        return argv

    def run(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        check: bool = True,
        timeout: float = 600,
        input: str | None = None,
    ) -> Result:
        argv = self.argv([str(c) for c in cmd], env, None if cwd is None else str(cwd))
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        res = Result(
            [str(c) for c in cmd], proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start
        )
        if check and proc.returncode != 0:
            raise CommandFailed(res.explain())
        return res

    def popen(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Starts CMD in the root; the returned PID is CMD's own (the helpers exec down to it)."""
        argv = self.argv([str(c) for c in cmd], env, None if cwd is None else str(cwd))
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]

    def path(self, p: str) -> Path:
        """Where a path inside the root is on the host."""
        return Path(self.root) / p.lstrip("/")

    def find_lib(self, name: str) -> str:
        """Absolute path (inside the root) of a library shipped by a package in the root."""
        for d in (f"/usr/lib/{os.uname().machine}-linux-gnu", "/usr/lib", "/usr/lib64"):
            for sub in ("", "softhsm", "pkcs11", "ossl-modules"):
                p = f"{d}/{sub}/{name}" if sub else f"{d}/{name}"
                if self.path(p).exists():
                    return p
        raise Missing(f"{name} is not installed in the Debian 13 root {self.root}")

    def openssl_cnf(self, module: str) -> str:
        """The scoped openssl.cnf, from the shim's own generator (``sc4dnssec openssl-cnf``)."""
        from shim.cli import openssl_cnf

        return openssl_cnf(module, self.find_lib("pkcs11.so"))


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """Stops a process started with Trixie.popen by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


@dataclass
class Shim:
    """The shim installed in a venv inside the root."""

    venv: str
    module: str  # the PKCS#11 module, a path inside the root
    cli: str  # sc4dnssec in that venv


_NOT_SOURCE = shutil.ignore_patterns(".git", ".tox", ".venv", ".ci-venv", "build", "dist", "*.egg-info",
                                     "__pycache__", "*.so", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def install_shim(trixie: Trixie, base: Path) -> Shim:
    """Copy the checkout to ``base/src`` and pip-install it into ``base/venv`` over Debian's
    cffi/cryptography/setuptools (``base`` must be bind-mounted into the root).

    A venv per caller, so concurrent runs and the cached root never see each other's builds.
    Raises :class:`Missing` naming the step that failed."""
    src, venv = base / "src", base / "venv"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE, symlinks=True)
    steps: list[list[str | os.PathLike[str]]] = [
        ["python3", "-m", "venv", "--system-site-packages", venv],
        [venv / "bin" / "pip", "install", "--no-index", "--no-build-isolation", "--quiet", src],
    ]
    for step in steps:
        res = trixie.run(step, env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"}, timeout=900, check=False)
        if res.returncode != 0:
            raise Missing(f"the shim does not build/install in the Debian 13 root:\n{res.explain()}")
    cli = str(venv / "bin" / "sc4dnssec")
    res = trixie.run([cli, "module-path"], check=False)
    if res.returncode != 0:
        raise Missing(f"`sc4dnssec module-path` fails in the Debian 13 root:\n{res.explain()}")
    module = res.stdout.strip()
    if trixie.run(["test", "-f", module], check=False).returncode != 0:
        raise Missing(f"`sc4dnssec module-path` names {module}, which does not exist")
    return Shim(str(venv), module, cli)
