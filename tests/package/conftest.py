"""Fixtures for the Debian package tests: the .deb, and throwaway Debian 13 roots to install it in.

Each throwaway root is an overlayfs over the shared Debian 13 root of ``ci/debian13-root``: every
write (dpkg's database, /etc, /var) lands in a per-test upper directory, so the shared root is never
changed and a test starts from a root that has never seen the package. The overlays are mounted in
a mount namespace private to this pytest process, so they vanish with it, even on SIGKILL.

The .deb is ``$SC4DNSSEC_DEB`` when set (ci/test builds it once with ``ci/package``), else built here
with ``ci/package --no-check``. Missing prerequisites fail with a message naming them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from sc4testkit.trixie import REPO, Missing, Trixie

PACKAGE = "smartcards4dnssec"
CI_PACKAGE = REPO / "ci" / "package"
DROPIN = "/usr/lib/systemd/system/named.service.d/smartcards4dnssec.conf"
NAMED_UNIT = "/usr/lib/systemd/system/named.service"
CLONE_NEWNS = 0x00020000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "package: the Debian package, installed in a throwaway Debian 13 root")


def fail_missing(e: Exception) -> None:
    pytest.fail(f"package test prerequisite missing: {e}", pytrace=False)


class Overlay(Trixie):
    """A Debian 13 root of our own: ci/lib/trixie.sh runs commands in it (SC4DNSSEC_TRIXIE_CHROOT)."""

    def argv(self, cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> list[str]:
        return ["env", f"SC4DNSSEC_TRIXIE_CHROOT={self.root}", *super().argv(cmd, env, cwd)]

    def as_user(self, user: str, cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
        """CMD run as USER, keeping the environment the caller gives (as systemd's User= would)."""
        return ["runuser", "-u", user, "--", *[str(c) for c in cmd]]

    def stat(self, path: str) -> str:
        return self.run(["stat", "-c", "%U:%G %a", path]).stdout.strip()

    def install(self, deb: Path, *apt_args: str) -> str:
        """apt-get install ./DEB, as an operator would (offline: the root already has the deps)."""
        incoming = self.path("/tmp/incoming")
        incoming.mkdir(exist_ok=True)
        target = incoming / deb.name
        target.write_bytes(deb.read_bytes())
        res = self.run(
            ["apt-get", "install", "-y", "--no-install-recommends", *apt_args, f"/tmp/incoming/{deb.name}"],
            env={"DEBIAN_FRONTEND": "noninteractive"},
            check=False,
            timeout=300,
        )
        assert res.returncode == 0, f"apt-get install {deb.name} failed:\n{res.explain()}"
        return res.stdout + res.stderr


def _private_mount_namespace() -> None:
    """Moves this process into its own mount namespace, so every overlay dies with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise Missing(f"unshare(CLONE_NEWNS) failed: {os.strerror(err)} (run as root, single-threaded)")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)


@pytest.fixture(scope="session")
def shared_root() -> Trixie:
    try:
        # On a Debian 13 host the shared root is "/" itself: the overlays then lie over the host's
        # own root filesystem, so nothing is installed on the host either.
        root = Trixie.ensure()
        _private_mount_namespace()
    except Missing as e:
        fail_missing(e)
        raise
    return root


@pytest.fixture(scope="session")
def deb(shared_root: Trixie, tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("SC4DNSSEC_DEB")
    if given:
        path = Path(given).resolve()
        if not path.is_file():
            fail_missing(Missing(f"SC4DNSSEC_DEB={given} does not exist"))
        return path
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        [str(CI_PACKAGE), "--no-check", "--out", str(out)], stdout=subprocess.PIPE, stderr=sys.stderr, text=True
    )
    if proc.returncode != 0:
        fail_missing(Missing(f"ci/package failed (exit {proc.returncode}); see its messages above"))
    return Path(proc.stdout.strip().splitlines()[-1])


def _mount_overlay(lower: str, base: Path) -> Path:
    upper, work, merged = base / "upper", base / "work", base / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], capture_output=True, text=True)
    if res.returncode != 0:
        fail_missing(Missing(f"cannot mount an overlay over {lower}: {res.stderr.strip()}"))
    return merged


@contextlib.contextmanager
def overlay_root(shared_root: Trixie) -> Iterator[Overlay]:
    """A throwaway copy-on-write Debian 13 root, without the package."""
    base = Path(tempfile.mkdtemp(prefix="sc4pkg-root-"))
    if shared_root.root == "/":
        # The upper layer may not lie inside the lower one: over "/" it lives on a tmpfs of its own.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "sc4pkg", str(base)], check=True)
    merged = _mount_overlay(shared_root.root, base)
    try:
        yield Overlay(str(merged))
    finally:
        subprocess.run(["umount", "-l", str(merged)], capture_output=True)
        if shared_root.root == "/":
            subprocess.run(["umount", "-l", str(base)], capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], capture_output=True)


@pytest.fixture
def fresh_root(shared_root: Trixie) -> Iterator[Overlay]:
    with overlay_root(shared_root) as root:
        yield root


def upper_dir(root: Overlay) -> Path:
    return Path(root.root).parent / "upper"


def systemd_environment(text: str) -> dict[str, str]:
    """The Environment= assignments of a unit or drop-in, in order (later ones win, as in systemd)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Environment="):
            for word in shlex.split(line.removeprefix("Environment=")):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def systemd_command(text: str, key: str) -> list[str] | None:
    """The last non-empty KEY= command line (an empty KEY= resets the list, as in systemd)."""
    cmd: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(f"{key}="):
            value = line.removeprefix(f"{key}=").strip()
            cmd = shlex.split(value) if value else None
    return cmd
