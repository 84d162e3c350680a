"""A private pcscd with vpcd readers, and card processes in them, all started and stopped by PID.

pcscd (1.9.9 and 2.x alike) always binds ``/run/pcscd/pcscd.comm``.  To never touch a system pcscd
we run ours in its own mount namespace with a private directory bind-mounted over ``/run``::

    unshare -m --propagation private sh -c 'mount --bind RUN_DIR/root /run && exec pcscd -f -c CONF'

(``sh`` and ``unshare`` exec, so the PID we get is pcscd's.)  Clients reach it with
``PCSCLITE_CSOCK_NAME=RUN_DIR/root/pcscd/pcscd.comm``.  Each vpcd config entry offers two readers
on consecutive TCP ports; reader ``r`` listens on ``base_port + r``.  Ports are chosen free, so
several harnesses (several developers, parallel CI jobs) coexist on one machine.

polkit: a pcscd built with polkit (Debian 13's 2.x; Debian 12's 1.9.9 is built without) asks
polkitd over the system D-Bus before serving a client, and rejects every client when it cannot
ask ("Rejected unauthorized PC/SC client").  Our pcscd serves only a socket in a private
directory, so it runs with ``--disable-polkit`` whenever ``pcscd --help`` offers that option;
access is then the socket directory's permissions, as with a pcscd built without polkit.

Failure: whatever :meth:`Harness.start` or :meth:`Harness.add_card` started is stopped again
before the error propagates, and the state file names every process while it runs, so
``virtualcard down`` finds whatever a killed ``virtualcard up`` left.

Stale ATRs: pcscd polls presence every 400 ms; a card re-inserted faster than that is never seen
as removed.  :meth:`Harness.remove` therefore waits until pcscd reports the reader empty.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from .cardinfo import find_module

# Names a process the caller waits for that has died, or None while it runs.
Gone = Callable[[], "str | None"]

YUBICO_READER_NAME = "Yubico Virtual PCD"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
OPENSC_PKCS11_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib64/opensc-pkcs11.so",
    "/usr/lib/opensc-pkcs11.so",
    "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so",
)
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class HarnessError(RuntimeError):
    pass


YKCS11_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libykcs11.so",
    "/usr/lib/aarch64-linux-gnu/libykcs11.so",
    "/usr/lib/libykcs11.so",
)


def ykcs11_module() -> str:
    """Yubico's PKCS#11 module (Debian package ``ykcs11``); env ``SC4DNSSEC_YKCS11`` overrides."""
    env = os.environ.get("SC4DNSSEC_YKCS11")
    if env:
        return env
    for path in YKCS11_CANDIDATES:
        if os.path.exists(path):
            return path
    raise HarnessError("libykcs11.so not found (apt install ykcs11)")


def opensc_module() -> str:
    """Path of opensc-pkcs11.so (env ``OPENSC_PKCS11`` wins)."""
    path = find_module("OPENSC_PKCS11", OPENSC_PKCS11_CANDIDATES)
    if path:
        return path
    raise HarnessError("opensc-pkcs11.so not found (install opensc-pkcs11 or set OPENSC_PKCS11)")


@lru_cache(maxsize=4)
def pcscd_options(pcscd: str) -> tuple[str, ...]:
    """The long options this pcscd lists in ``--help`` (build-dependent: polkit, hotplug...)."""
    try:
        out = subprocess.run([pcscd, "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"cannot run {pcscd} --help: {e}") from e
    return tuple(sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", out.stdout + out.stderr))))


def pcscd_argv(conf: Path, pcscd: str = "pcscd") -> list[str]:
    """The private pcscd's command line: foreground, our reader config, polkit off if built in."""
    argv = [pcscd, "-f", "-c", str(conf)]
    if "--disable-polkit" in pcscd_options(pcscd):
        argv.append("--disable-polkit")
    return argv


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def find_free_ports(n: int) -> int:
    """A base port with ``n`` consecutive free ports (vpcd's default 35963 is avoided)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(36000, 60000, 2)
        if all(_port_free(base + i) for i in range(n)):
            return base
    raise HarnessError("no free port range for vpcd")


def pid_alive(pid: int, expect: str = "") -> bool:
    """True if ``pid`` runs and its command line contains ``expect`` (guards against PID reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return expect in cmdline


def _terminate(pid: int, expect: str, timeout: float = 5.0) -> None:
    if not pid_alive(pid, expect):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # reap if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        if not pid_alive(pid, expect):
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)


@dataclass
class CardProc:
    reader: int
    port: int
    pid: int
    state_dir: str
    inserted: bool = True
    latency_ms: float | None = None
    profile: str | None = None


@dataclass
class Harness:
    """One private pcscd and its virtual cards; persisted in ``run_dir/harness.json``."""

    run_dir: Path
    readers: int = 2
    base_port: int = 0
    pcscd_pid: int = 0
    cards: dict[int, CardProc] = field(default_factory=dict)
    # Yubico's libykcs11 serves only readers whose name starts with "Yubico": such a harness
    # says YUBICO_READER_NAME.
    reader_prefix: str = "Virtual PCD"

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    # -- paths and environment ---------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        return self.run_dir / "root" / "pcscd" / "pcscd.comm"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to find this pcscd."""
        return {"PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    def reader_name(self, reader: int) -> str:
        entry, slot = divmod(reader, 2)
        return f"{self._friendly(entry)} 00 {slot:02d}"

    def _friendly(self, entry: int) -> str:
        return self.reader_prefix if entry == 0 else f"{self.reader_prefix} {entry}"

    # -- persistence (the CLI starts in one process and stops in another) ---------------
    def save(self) -> None:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        data["cards"] = {str(k): asdict(v) for k, v in self.cards.items()}
        tmp = self.run_dir / "harness.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.run_dir / "harness.json")

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Harness:
        raw = json.loads((Path(run_dir) / "harness.json").read_text())
        cards = {int(k): CardProc(**v) for k, v in raw.pop("cards").items()}
        h = cls(**raw)
        h.cards = cards
        return h

    # -- pcscd -------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Start the private pcscd with ``readers`` vpcd readers on free ports.

        On any failure (including an interrupt) pcscd is stopped again before the error
        propagates; the state file names pcscd from the moment it runs.
        """
        if self.pcscd_pid and pid_alive(self.pcscd_pid, "pcscd"):
            return
        pcscd = shutil.which("pcscd")
        if pcscd is None or not os.path.exists(VPCD_DRIVER):
            raise HarnessError("pcscd and vsmartcard-vpcd are required (apt install pcscd vsmartcard-vpcd)")
        if len(str(self.socket_path)) > 100:
            raise HarnessError(f"socket path too long for AF_UNIX: {self.socket_path}")
        conf = self.run_dir / "reader.conf.d"
        root = self.run_dir / "root"
        conf.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / "pcscd", ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        entries = (self.readers + 1) // 2
        self.base_port = find_free_ports(entries * 2)
        for old in conf.iterdir():
            old.unlink()
        for i in range(entries):
            port = self.base_port + 2 * i
            driver = VPCD_DRIVER
            if i:
                # vpcd keeps its two reader contexts in globals: a second config entry with the
                # same LIBPATH shares them (both entries end up on the last ports).  A copy of
                # the driver under another name is dlopen'ed as a separate instance.
                driver = str(self.run_dir / f"libifdvpcd-{i}.so")
                shutil.copyfile(VPCD_DRIVER, driver)
            (conf / f"vpcd{i}").write_text(self._reader_conf(i, port, driver))
        unshare = ["unshare", "-m", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare.insert(1, "-r")  # user namespace: mount without real root
        inner = f"mount --bind {shlex.quote(str(root))} /run && exec {shlex.join(pcscd_argv(conf, pcscd))}"
        log_path = self.run_dir / "pcscd.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [*unshare, "sh", "-c", inner],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.pcscd_pid = proc.pid
        try:
            self.save()
            deadline = time.monotonic() + timeout
            while not self.socket_path.exists():
                if proc.poll() is not None:
                    raise HarnessError(f"pcscd exited ({proc.returncode}){self._pcscd_log_hint(log_path)}")
                if time.monotonic() > deadline:
                    raise HarnessError(f"pcscd did not create its socket; see {log_path}")
                time.sleep(0.02)
            # the readers appear once the vpcd driver is loaded
            try:
                self._wait(
                    lambda s: all(self.reader_name(r) in s for r in range(self.readers)),
                    timeout,
                    "vpcd readers did not appear",
                    lambda: None if proc.poll() is None else f"pcscd exited ({proc.returncode})",
                )
            except HarnessError as e:
                raise HarnessError(f"{e}{self._pcscd_log_hint(log_path)}") from None
        except BaseException:
            self.stop()
            raise
        self.save()

    def _reader_conf(self, entry: int, port: int, driver: str) -> str:
        """One reader.conf.d entry for a vpcd instance listening on ``port``."""
        return (
            f'FRIENDLYNAME "{self._friendly(entry)}"\nDEVICENAME /dev/null:{port}\n'
            f"LIBPATH {driver}\nCHANNELID {port}\n"
        )

    @staticmethod
    def _pcscd_log_hint(log_path: Path) -> str:
        """The part of pcscd's log that explains missing readers, for the error message."""
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        if any("Rejected unauthorized PC/SC client" in line for line in lines):
            return (
                f"; pcscd rejects its clients (polkit; its --help offers no --disable-polkit); see {log_path}"
            )
        tail = "\n  ".join(lines[-5:])
        return f"; {log_path} ends:\n  {tail}" if tail else f"; {log_path} is empty"

    def stop(self) -> None:
        """Stop every card and pcscd, by PID only."""
        for card in list(self.cards.values()):
            _terminate(card.pid, "virtualcard.vpcd")
        self.cards.clear()
        if self.pcscd_pid:
            _terminate(self.pcscd_pid, "pcscd")
            self.pcscd_pid = 0
        if self.run_dir.exists():
            self.save()

    @property
    def running(self) -> bool:
        return bool(self.pcscd_pid) and pid_alive(self.pcscd_pid, "pcscd")

    # -- reader status via opensc-tool -------------------------------------------------
    def reader_status(self) -> dict[str, bool]:
        """Reader name -> card present, as pcscd reports it to clients."""
        env = {**os.environ, **self.env}
        out = subprocess.run(
            ["opensc-tool", "-l"], env=env, capture_output=True, text=True, timeout=20
        ).stdout
        status: dict[str, bool] = {}
        for line in out.splitlines():
            m = re.match(rf"^\s*\d+\s+(Yes|No)\s+(?:\S+\s+)?({re.escape(self.reader_prefix)}.*)$", line)
            if m:
                status[m.group(2).strip()] = m.group(1) == "Yes"
        return status

    def _listing(self) -> str:
        return "\n".join(f"{n} {p}" for n, p in self.reader_status().items())

    def _wait(self, cond, timeout: float, what: str, gone: Gone | None = None) -> None:  # type: ignore[no-untyped-def]
        """Poll the reader listing until ``cond`` holds; ``gone()`` names a process that died."""
        deadline = time.monotonic() + timeout
        while True:
            listing = self._listing()
            if cond(listing):
                return
            dead = gone() if gone else None
            if dead:
                raise HarnessError(f"{what}: {dead}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{what}; readers: {listing!r}")
            time.sleep(0.05)

    def wait_present(
        self, reader: int, present: bool = True, timeout: float = 15.0, gone: Gone | None = None
    ) -> None:
        name = self.reader_name(reader)
        self._wait(
            lambda s: f"{name} {present}" in s,
            timeout,
            f"card in {name} not {'present' if present else 'absent'}",
            gone,
        )

    def opensc_conf_for(self, reader: int) -> Path:
        """An OPENSC_CONF that hides every other virtual reader from OpenSC.

        Every OpenSC process binds the card in every reader it sees, and waits for that card's
        PC/SC transaction; processes that each sign on "their" card but see all readers
        therefore serialise on each other.  A signer pinned to one reader does not.
        """
        others = [self.reader_name(r) for r in range(self.readers) if r != reader]
        path = self.run_dir / f"opensc-reader{reader}.conf"
        body = ", ".join(f'"{name}"' for name in others)
        path.write_text(f"app default {{\n  ignored_readers = {body};\n}}\n")
        return path

    # -- cards -------------------------------------------------------------------------
    def free_reader(self) -> int:
        """First free reader, one per vpcd instance first: pcscd serialises the two slots of one
        vpcd instance (one multi-slot reader, one mutex), so cards that should work in parallel
        belong in different instances (even reader numbers), like two USB readers."""
        for r in sorted(range(self.readers), key=lambda r: (r % 2, r)):
            if r not in self.cards:
                return r
        raise HarnessError(f"all {self.readers} readers hold a card")

    def add_card(
        self,
        state_dir: str | os.PathLike[str],
        reader: int | None = None,
        latency_ms: float | None = None,
        profile: str | None = None,
        wait: bool = True,
        verbose: bool = False,
    ) -> CardProc:
        """Start a card process for an initialised state dir in a reader (the first free one)."""
        if reader is None:
            reader = self.free_reader()
        if reader in self.cards:
            raise HarnessError(f"reader {reader} already holds a card")
        port = self.base_port + reader
        cmd = [sys.executable, "-m", "virtualcard.vpcd", "--state", str(state_dir), "--port", str(port)]
        if latency_ms is not None:
            cmd += ["--latency-ms", str(latency_ms)]
        if profile is not None:
            cmd += ["--profile", profile]
        if verbose:
            cmd.append("-v")
        env = {**os.environ, "PYTHONPATH": PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        log_path = self.run_dir / f"card{reader}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
            )
        card = CardProc(reader, port, proc.pid, str(state_dir), True, latency_ms, profile)
        self.cards[reader] = card
        try:
            self.save()
            if wait:
                try:
                    self.wait_present(
                        reader, True, gone=lambda: None if proc.poll() is None else f"card exited ({proc.returncode})"
                    )
                except HarnessError as e:
                    raise HarnessError(f"{e}; see {log_path}") from None
        except BaseException:
            self.cards.pop(reader, None)
            _terminate(proc.pid, "virtualcard.vpcd")
            self.save()
            raise
        return card

    def stop_card(self, reader: int, wait: bool = True) -> None:
        card = self.cards.pop(reader)
        _terminate(card.pid, "virtualcard.vpcd")
        self.save()
        if wait:
            self.wait_present(reader, False)

    def remove(self, reader: int = 0, wait: bool = True) -> None:
        """Pull the card out of the reader (the card process keeps running)."""
        card = self.cards[reader]
        os.kill(card.pid, signal.SIGUSR1)
        card.inserted = False
        self.save()
        if wait:
            self.wait_present(reader, False)

    def insert(self, reader: int = 0, wait: bool = True) -> None:
        card = self.cards[reader]
        os.kill(card.pid, signal.SIGUSR2)
        card.inserted = True
        self.save()
        if wait:
            self.wait_present(reader, True)
