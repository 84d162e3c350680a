"""Two hosts on this machine: the card host and the signer host, each a network namespace of its
own (joined by a veth pair) with its own sshd, and a mount namespace per command that hides the
other host's directories.

The card host runs the card under test (``--card``; the virtual PIV card in ci/test) behind
``sc4dnssec remote serve``; the signer host forwards the card host's socket with ssh, as printed
by ``sc4dnssec remote env``, and runs the signers with the shim over p11-kit-client.so. Every
daemon is started and stopped by PID. Unix sockets are not scoped by network namespaces, so the
mount namespaces are what make "the signer host cannot see the card host's socket" true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sc4testkit.shimenv import ShimProcesses, shim_environment
from shim.locate import module_path
from virtualcard.cardinfo import CardInfo

REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
CARD_ADDR, SIGNER_ADDR = "192.0.2.1", "192.0.2.2"
# program -> the Debian package that provides it (ci/packages.txt)
PACKAGES = {"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
            "ip": "iproute2", "unshare": "util-linux", "setpriv": "util-linux", "p11-kit": "p11-kit",
            "pkcs11-tool": "opensc", "ldns-signzone": "ldnsutils", "ldns-keygen": "ldnsutils",
            "ldns-verify-zone": "ldnsutils"}
# A wait for a daemon or a socket to come up; it bounds a wait, it is not a measurement.
STARTUP = 30.0
_HIDE = """set -e
n=$1; shift
while [ "$n" -gt 0 ]; do mount -t tmpfs -o mode=0700,size=64k sc4-other-host "$1"; shift; n=$((n-1)); done
exec "$@"
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "remote: the card on one host, the signer on another (netns + sshd)")


def unavailable(why: str) -> None:
    if os.environ.get("SC4_CI"):
        pytest.fail(f"remote card tests: {why}", pytrace=False)
    pytest.skip(why)


def require_tools() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (ip netns, mount namespaces, sshd)")
    for tool, pkg in PACKAGES.items():
        if shutil.which(tool) is None and not (tool == "sshd" and os.path.exists(SSHD)):
            unavailable(f"`{tool}` is missing: apt-get install {pkg}")
    try:
        from shim.remote import client_module

        client_module()
    except RuntimeError as e:
        unavailable(str(e))


def wait_for(what: str, ready: Any, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + STARTUP
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: exited {proc.returncode}\n{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not up after {STARTUP:.0f} s\n{log.read_text() if log else ''}")
        time.sleep(0.05)


def listening(host: Host, path: str) -> bool:
    """Whether a process on ``host`` listens on the unix socket ``path``.

    Read from /proc/PID/net/unix of the host's sshd (the table is per network namespace): a socket
    file exists from bind(), before listen(), and a stale one outlives its server."""
    try:
        lines = Path(f"/proc/{host.procs['sshd'].pid}/net/unix").read_text().splitlines()[1:]
    except (OSError, KeyError):
        return False
    return any(f[-1] == path and int(f[3], 16) & 0x10000 for f in (line.split() for line in lines) if len(f) >= 8)


@dataclass
class Host:
    """One host: a network namespace, a private directory, and what of the other host it must not see."""

    name: str
    netns: str
    addr: str
    dir: Path
    hide: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def argv(self, cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``cmd`` run on this host: its network namespace, the other host's directories hidden.

        ``ip netns exec``, ``unshare`` and ``sh`` each exec the next, so the PID of the process
        started is the PID of ``cmd``."""
        return (["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", _HIDE, "sh", str(len(self.hide)), *self.hide] + [str(c) for c in cmd])

    def run(self, cmd: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None, *,
            check: bool = True, timeout: float = 300, user: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(c) for c in cmd]
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        proc = subprocess.run(self.argv(argv), env=dict(env or os.environ), capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: {argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, key: str, cmd: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None) -> Path:
        """Start a daemon on this host; its output goes to ``dir/key.log`` (returned)."""
        log = self.dir / f"{key}.log"
        with log.open("ab") as out:
            self.procs[key] = subprocess.Popen(self.argv(cmd), env=dict(env or os.environ), stdout=out,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        return log

    def stop(self, key: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(key, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STARTUP)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def running(self, key: str) -> bool:
        p = self.procs.get(key)
        return p is not None and p.poll() is None

    def stop_all(self) -> None:
        for key in list(self.procs):
            self.stop(key)


def _sshd(host: Host, keys: Path, forwarding: str) -> None:
    """sshd for ``host``: root by key only, unix socket forwarding in one direction.

    ``AllowTcpForwarding no`` refuses unix socket forwarding too (sshd permits a direct
    stream-local channel only with local TCP forwarding on): ``local`` on the card host for -L,
    ``remote`` on the signer host for -R."""
    d = host.dir / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key"], check=True)
    cfg = d / "sshd_config"
    cfg.write_text(f"""ListenAddress {host.addr}
Port 22
HostKey {d / 'host_key'}
PidFile none
AuthorizedKeysFile {keys / 'client_key.pub'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitTTY no
X11Forwarding no
AllowTcpForwarding {forwarding}
AllowAgentForwarding no
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
ClientAliveInterval 2
ClientAliveCountMax 3
LogLevel VERBOSE
""")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = host.start("sshd", [SSHD, "-D", "-e", "-f", cfg])
    wait_for(f"sshd on {host.name}", lambda: "Server listening on" in log.read_text(), host.procs["sshd"], log)
    pub = (d / "host_key.pub").read_text().split()
    with (keys / "known_hosts").open("a") as f:
        f.write(f"{host.addr} {pub[0]} {pub[1]}\n")


@dataclass
class Remote:
    """The two hosts, the card host's server, the ssh link and both shims' audit logs."""

    card_host: Host
    signer_host: Host
    card: CardInfo
    keys: Path
    card_socket: str
    signer_socket: str
    card_shim: ShimProcesses  # the shim inside p11-kit-remote on the card host
    signer: ShimProcesses  # the shim over p11-kit-client.so on the signer host
    env_doc: dict[str, Any]  # `sc4dnssec remote env --format json`
    wire: str = ""  # the card host's end of the veth pair

    def cut(self) -> None:
        """Take the network between the hosts down: ssh is left running, nothing answers it."""
        _ip("-n", self.card_host.netns, "link", "set", self.wire, "down")

    def mend(self) -> None:
        """Bring the network back; forget the neighbours that failed meanwhile (a FAILED entry
        answers "No route to host" for a while)."""
        _ip("-n", self.card_host.netns, "link", "set", self.wire, "up")
        for h in (self.card_host, self.signer_host):
            _ip("-n", h.netns, "neigh", "flush", "all")

        def up() -> bool:
            out = subprocess.run(["ip", "-n", self.card_host.netns, "-o", "link", "show", self.wire],
                                 capture_output=True, text=True).stdout
            return "state UP" in out

        wait_for("the network between the hosts", up)

    def ssh_options(self) -> list[str]:
        return ["-F", "/dev/null", "-i", str(self.keys / "client_key"), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.keys / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes"]

    def link_up(self, form: str = "local") -> None:
        """Start the ssh link the way `remote env` prints it: ``local`` (-L, from the signer host to
        the card host's sshd) or ``remote`` (-R, from the card host to the signer host's sshd)."""
        self.link_down()
        argv = list(self.env_doc["ssh_local" if form == "local" else "ssh_remote"])
        argv[1:1] = self.ssh_options()
        host = self.signer_host if form == "local" else self.card_host
        log = host.start("ssh", argv)
        wait_for(f"ssh -{form[0].upper()}", lambda: listening(self.signer_host, self.signer_socket),
                 host.procs["ssh"], log)

    def link_down(self, sig: int = signal.SIGTERM) -> None:
        for host in (self.card_host, self.signer_host):
            host.stop("ssh", sig)

    def link_pid(self) -> int:
        for host in (self.card_host, self.signer_host):
            if host.running("ssh"):
                return host.procs["ssh"].pid
        raise AssertionError("the ssh link is not running")

    def sign_env(self, **extra: str) -> dict[str, str]:
        return {**self.signer.env, **extra}

    def on_signer(self, cmd: Sequence[str | os.PathLike[str]], *, check: bool = True, timeout: float = 300,
                  env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.signer_host.run(cmd, env or self.signer.env, check=check, timeout=timeout)

    def p11tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.on_signer(["pkcs11-tool", "--module", self.signer.module, *args], check=check)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def remote(card: CardInfo) -> Iterator[Remote]:
    require_tools()
    tag = f"{os.getpid() % 100000}"
    work = Path(tempfile.mkdtemp(prefix="sc4r-"))  # short: AF_UNIX paths are limited to 108 bytes
    card_dir, signer_dir, keys = work / "card", work / "signer", work / "keys"
    for d in (card_dir, signer_dir, keys):
        d.mkdir(mode=0o700)
    # The signer host sees none of the card's own environment (pcscd's socket, SoftHSM's tokens).
    card_private = sorted({str(Path(v).parent) for v in card.env.values() if os.path.isabs(v)
                           and os.path.exists(v)})
    ch = Host("card host", f"sc4c{tag}", CARD_ADDR, card_dir, hide=[str(signer_dir)])
    sh = Host("signer host", f"sc4s{tag}", SIGNER_ADDR, signer_dir, hide=[str(card_dir), *card_private])
    made: list[str] = []
    try:
        for h in (ch, sh):
            _ip("netns", "add", h.netns)
            made.append(h.netns)
            _ip("-n", h.netns, "link", "set", "lo", "up")
        _ip("link", "add", f"vc{tag}", "netns", ch.netns, "type", "veth", "peer", "name", f"vs{tag}",
            "netns", sh.netns)
        for h, dev in ((ch, f"vc{tag}"), (sh, f"vs{tag}")):
            _ip("-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", dev)
            _ip("-n", h.netns, "link", "set", dev, "up")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "client_key"], check=True)
        _sshd(ch, keys, "local")
        _sshd(sh, keys, "remote")
        card_socket = str(card_dir / "run" / "card.sock")
        signer_socket = str(signer_dir / "run" / "card.sock")
        (signer_dir / "run").mkdir(mode=0o700)
        module = module_path()
        card_env, card_log = shim_environment(card_dir / "audit", card.module, card.env, card.shim_conf)
        serve = [sys.executable, "-m", "shim.cli", "remote", "serve", "--socket", card_socket,
                 "--backend", card.module]
        log = ch.start("server", serve, card_env)
        wait_for("sc4dnssec remote serve", lambda: listening(ch, card_socket), ch.procs["server"], log)
        doc = json.loads(subprocess.run(
            [sys.executable, "-m", "shim.cli", "remote", "env", "--format", "json", "--socket", signer_socket,
             "--card-socket", card_socket, "--card-host", f"root@{CARD_ADDR}", "--signer-host",
             f"root@{SIGNER_ADDR}", "--alive-interval", "2", "--alive-count", "3"],
            check=True, capture_output=True, text=True, cwd=REPO).stdout)
        signer_env, signer_log = shim_environment(signer_dir / "audit", doc["env"]["SC4DNSSEC_BACKEND"],
                                                  {"P11_KIT_SERVER_ADDRESS": doc["env"]["P11_KIT_SERVER_ADDRESS"]},
                                                  {})
        r = Remote(ch, sh, card, keys, card_socket, signer_socket,
                   ShimProcesses(module, card_env, card_log), ShimProcesses(doc["module"], signer_env, signer_log),
                   doc, wire=f"vc{tag}")
        r.link_up()
        yield r
    finally:
        for h in (sh, ch):
            h.stop_all()
        for ns in made:
            # what sshd forked for a session (and its p11-kit-remote) lives in the namespace: end it by PID
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if not os.environ.get("SC4_REMOTE_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def link(remote: Remote) -> Iterator[Remote]:
    """The remote setup with the -L link up at the start of the test (a test may drop it)."""
    if not remote.signer_host.running("ssh") and not remote.card_host.running("ssh"):
        remote.link_up()
    yield remote
