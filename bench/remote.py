"""(6) the remote card: the C consumer through the shim over p11-kit-client.so, to ``p11-kit
server`` exporting the shim over SoftHSM (docs/remote.md), against the local shim over the same
SoftHSM token.

Two links: the server's own unix socket (``socket``: p11-kit's RPC alone) and that socket
forwarded by ``ssh -L`` over loopback to an sshd of the bench's own (``ssh``: what an operator
runs, without a network's latency). SoftHSM signs in well under the link's time, so the rows
show what the link adds per call; a card's own time per signature (section 3) comes on top.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import driver
from bench.modules import clean_env
from bench.stats import interleaved, median
from shim import remote
from shim.locate import module_path

WAYS = ("shim", "socket", "ssh")
SSHD = "/usr/sbin/sshd"
#: bounds a wait for a daemon or a socket; not a measurement
STARTUP = 30.0
#: each sample loops at least this long (seconds), so that a slow link still gives a stable rate
MIN_SECONDS = 2.0


@dataclass
class RemoteResult:
    op: str
    n: int
    ops_per_s: dict[str, float]  # 1e6 / us_per_op: the loop's rate, one thread
    us_per_op: dict[str, float]  # median of the samples' µs per operation


def _wait(what: str, ready: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP
    while not ready():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)


def _connectable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _daemon(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STARTUP)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def links(backend: str, backend_env: dict[str, str], work: Path) -> Iterator[dict[str, tuple[str, dict[str, str]]]]:
    """The three ways, as (module, environment) for p11drive; the server and the ssh link run
    while the context is open."""
    work.mkdir(parents=True, exist_ok=True)
    shim = module_path()
    card_sock = str(work / "card" / "card.sock")
    remote.prepare_socket_dir(card_sock)
    fwd_dir = work / "fwd"
    fwd_dir.mkdir(mode=0o700, exist_ok=True)
    fwd_sock = str(fwd_dir / "card.sock")
    client = remote.client_module()
    server_env = clean_env({**backend_env, "SC4DNSSEC_BACKEND": backend,
                            "SC4DNSSEC_AUDIT_LOG": str(work / "audit-card.jsonl")})
    with ExitStack() as stack:
        log = work / "server.log"
        srv = stack.enter_context(_daemon(remote.serve_argv(shim, card_sock), server_env, log))
        _wait("p11-kit server", lambda: _connectable(card_sock), srv, log)
        keys = work / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / name], check=True)
        port = _free_port()
        cfg = keys / "sshd_config"
        cfg.write_text(f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {keys / 'host_key'}\nPidFile none\n"
                       f"AuthorizedKeysFile {keys / 'client_key.pub'}\nPermitRootLogin prohibit-password\n"
                       "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                       "PermitTTY no\nAllowTcpForwarding local\nAllowStreamLocalForwarding yes\n")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        log = work / "sshd.log"
        sshd = stack.enter_context(_daemon([SSHD, "-D", "-e", "-f", str(cfg)], dict(os.environ), log))
        _wait("sshd", lambda: "Server listening on" in log.read_text(), sshd, log)
        pub = (keys / "host_key.pub").read_text().split()
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        argv = remote.Forward(fwd_sock, card_sock).local("root@127.0.0.1")
        argv[1:1] = ["-F", "/dev/null", "-p", str(port), "-i", str(keys / "client_key"), "-o", "IdentitiesOnly=yes",
                     "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={keys / 'known_hosts'}"]
        log = work / "ssh.log"
        ssh = stack.enter_context(_daemon(argv, dict(os.environ), log))
        _wait("ssh -L", lambda: _connectable(fwd_sock), ssh, log)

        def signer(sock: str, tag: str) -> tuple[str, dict[str, str]]:
            return shim, clean_env({**remote.client_env(sock, client),
                                    "SC4DNSSEC_AUDIT_LOG": str(work / f"audit-signer-{tag}.jsonl")})

        yield {"shim": (shim, clean_env({**backend_env, "SC4DNSSEC_BACKEND": backend,
                                         "SC4DNSSEC_AUDIT_LOG": str(work / "audit-local.jsonl")})),
               "socket": signer(card_sock, "socket"), "ssh": signer(fwd_sock, "ssh")}


def remote_rates(exe: Path, backend: str, backend_env: dict[str, str], pin: str, work: Path, reps: int,
                 n_sign: int, n_info: int) -> list[RemoteResult]:
    """One thread, one session: µs per operation (and the rate it gives) on each way, medians
    of ``reps`` interleaved runs."""
    if shutil.which("p11-kit") is None or not os.path.exists(SSHD):
        raise RuntimeError("needs p11-kit and openssh-server (ci/packages.txt)")
    out = []
    with links(backend, backend_env, work) as ways:
        for op, n in (("sign", n_sign), ("sessioninfo", n_info)):
            def sample(w: str, op: str = op, n: int = n) -> float:
                module, env = ways[w]
                # at least N operations and MIN_SECONDS: the loop alone is timed, after the
                # session, login and key search (which cross the link too)
                return float(driver.run(exe, ["loop", module, pin, op, "1", str(n), str(MIN_SECONDS)],
                                        env)["us_per_op_thread"])

            us = {w: median(v) for w, v in interleaved(reps, WAYS, sample).items()}
            out.append(RemoteResult(op, n, {w: 1e6 / v for w, v in us.items()}, us))
    return out
