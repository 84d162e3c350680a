"""The card on one host, the signer on another, over p11-kit's remoting (docs/remote.md).

Nothing here speaks PKCS#11 over a socket: ``p11-kit server`` exports the shim (over the
card's module) on a unix socket on the card host, ssh forwards that socket, and the signer's
shim loads ``p11-kit-client.so`` as its backend.  This module only builds those commands,
environments and paths, so the operator's recipe, the systemd examples and the tests use one
spelling of each.

Each side keeps its own audit log: the card host's shim runs inside ``p11-kit-remote`` (one
process per client connection), the signer's shim inside the signer.
"""

from __future__ import annotations

import os
import shlex
import socket
import stat
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's p11-kit-modules puts the client module, by multiarch triplet.
CLIENT_MODULE_DIRS = ("/usr/lib/{multiarch}/pkcs11", "/usr/lib/pkcs11", "/usr/lib64/pkcs11")
CLIENT_MODULE_NAME = "p11-kit-client.so"
SOCKET_NAME = "card.sock"
#: The whole token list of the provider: every slot the card's module shows.
ALL_TOKENS = "pkcs11:"
#: ssh notices a dead peer after ALIVE_INTERVAL * ALIVE_COUNT seconds and exits; the
#: forwarded socket then closes and every call waiting on it returns an error instead of hanging.
ALIVE_INTERVAL = 10
ALIVE_COUNT = 3


class RemoteError(RuntimeError):
    """The remote setup cannot be used as asked; the message says what to fix."""


def client_module() -> str:
    """Absolute path of p11-kit's client module (Debian: p11-kit-modules)."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in CLIENT_MODULE_DIRS:
        path = Path(d.format(multiarch=multiarch)) / CLIENT_MODULE_NAME
        if path.exists():
            return str(path)
    raise RemoteError(f"{CLIENT_MODULE_NAME} not found (apt-get install p11-kit-modules)")


def default_socket(env: Mapping[str, str] | None = None) -> str:
    """``$XDG_RUNTIME_DIR/sc4dnssec/card.sock`` for a user, ``/run/sc4dnssec/card.sock`` for root.

    A runtime directory, never /tmp: the socket's directory is the access control (0700)."""
    env = os.environ if env is None else env
    if os.geteuid() == 0:
        return f"/run/sc4dnssec/{SOCKET_NAME}"
    runtime = env.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise RemoteError("XDG_RUNTIME_DIR is not set: give --socket PATH in a directory only you can enter")
    return f"{runtime}/sc4dnssec/{SOCKET_NAME}"


def address(socket_path: str) -> str:
    """The P11_KIT_SERVER_ADDRESS of a unix socket."""
    return f"unix:path={socket_path}"


def prepare_socket_dir(socket_path: str) -> None:
    """Create the socket's directory 0700, or check an existing one is ours and closed to others.

    p11-kit's own check is the socket mode; a directory nobody else can enter keeps other local
    users from connecting whatever the socket's mode (p11-kit creates it 0711 under umask 022)."""
    d = Path(socket_path).parent
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise RemoteError(f"{d} is not a directory")
    if st.st_uid != os.geteuid():
        raise RemoteError(f"{d} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})")
    if st.st_mode & 0o077:
        raise RemoteError(f"{d} is mode {stat.S_IMODE(st.st_mode):04o}: others could reach the card's socket "
                          f"(chmod 700 {d})")
    sock = Path(socket_path)
    if sock.is_symlink() or (sock.exists() and not stat.S_ISSOCK(sock.lstat().st_mode)):
        raise RemoteError(f"{sock} exists and is not a socket")
    if sock.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(socket_path)
            except ConnectionRefusedError:
                sock.unlink()  # left by a server that died: p11-kit would fail to bind
                return
        raise RemoteError(f"a server already listens on {sock}")


def serve_argv(shim: str, socket_path: str, tokens: Sequence[str] = (ALL_TOKENS,), *,
               user: str | None = None, group: str | None = None) -> list[str]:
    """``p11-kit server`` in the foreground, exporting ``shim`` on ``socket_path``.

    p11-kit forks one ``p11-kit-remote`` per client connection, each loading the shim afresh:
    each connection is one process, one epoch, in the card host's audit log."""
    argv = ["p11-kit", "server", "--foreground", "--name", socket_path, "--provider", shim]
    if user:
        argv += ["--user", user]
    if group:
        argv += ["--group", group]
    return argv + list(tokens)


def serve_env(base: Mapping[str, str], backend: str | None) -> dict[str, str]:
    """The server's environment: ``base`` with the card's module as the shim's backend."""
    env = dict(base)
    if backend:
        env["SC4DNSSEC_BACKEND"] = backend
    if not env.get("SC4DNSSEC_BACKEND") and not env.get("SC4DNSSEC_CONF"):
        raise RemoteError("the shim needs the card's module: give --backend MODULE, or set SC4DNSSEC_BACKEND "
                          "or SC4DNSSEC_CONF")
    return env


def client_env(socket_path: str, module: str | None = None) -> dict[str, str]:
    """What the signer's shim needs: p11-kit-client.so as its backend, pointed at the forwarded socket."""
    return {"SC4DNSSEC_BACKEND": module or client_module(), "P11_KIT_SERVER_ADDRESS": address(socket_path)}


@dataclass(frozen=True)
class Forward:
    """One ssh forwarding of the card's socket to the signer's socket."""

    signer_socket: str
    card_socket: str
    alive_interval: int = ALIVE_INTERVAL
    alive_count: int = ALIVE_COUNT

    def _common(self) -> list[str]:
        return ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", f"ServerAliveInterval={self.alive_interval}",
                "-o", f"ServerAliveCountMax={self.alive_count}"]

    def local(self, card_host: str) -> list[str]:
        """Run on the signer host: ``-L`` makes the signer's socket, forwarded to the card host's.

        StreamLocalBindUnlink (client side for -L) replaces a socket a dead ssh left behind."""
        return self._common() + ["-o", "StreamLocalBindUnlink=yes", "-L",
                                 f"{self.signer_socket}:{self.card_socket}", card_host]

    def remote(self, signer_host: str) -> list[str]:
        """Run on the card host: ``-R`` makes the signer's socket from there (the signer host's
        sshd needs ``StreamLocalBindUnlink yes`` to replace a stale one)."""
        return self._common() + ["-R", f"{self.signer_socket}:{self.card_socket}", signer_host]


def sh_lines(env: Mapping[str, str]) -> str:
    """Bourne shell assignments, in the form ``p11-kit server --sh`` prints."""
    return "".join(f"{k}={shlex.quote(v)}; export {k};\n" for k, v in env.items())


def systemd_lines(env: Mapping[str, str]) -> str:
    """``Environment=`` lines for a unit or drop-in."""
    return "".join(f'Environment="{k}={v}"\n' for k, v in env.items())
