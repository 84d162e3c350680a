"""Fixtures for the real signers (Knot DNS, PowerDNS, OpenDNSSEC, ldns-signzone) through the shim.

Each test runs the signer's own programs on the token chosen by ``--card`` (the ``card`` fixture of
virtualcard.pytest_plugin), with the shim loaded in every process that opens the token, and then
judges the result with tools that load no PKCS#11 module at all (``ldns-verify-zone``,
``kzonecheck``, ``dig``) and with ``sc4dnssec audit verify``.

A missing program fails with the Debian package that provides it (ci/packages.txt installs them);
nothing is skipped silently. The one skip, OpenDNSSEC where Debian has no package (Debian 13),
prints why.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sc4testkit import zones
from shim.config import dumps as config_dumps
from shim.locate import module_path

ORIGIN = "example.test"
# SC4_SIGNERS_RECORD=DIR keeps each test's audit log in DIR (for conformance/record.py); the zones
# are then small, so the recorded sequences stay short enough to replay on every card.
RECORD_DIR = os.environ.get("SC4_SIGNERS_RECORD")
ZONE_NAMES = 3 if RECORD_DIR else 50
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# program -> the Debian 12 package that provides it (ci/packages.txt)
PACKAGES = {
    "keymgr": "knot",
    "knotd": "knot",
    "knotc": "knot",
    "kzonesign": "knot-dnssecutils",
    "kzonecheck": "knot-dnssecutils",
    "pdnsutil": "pdns-server",
    "pdns_server": "pdns-server",
    "p11-kit": "p11-kit",
    "ods-enforcerd": "opendnssec",
    "ods-signerd": "opendnssec",
    "ldns-signzone": "ldnsutils",
    "ldns-keygen": "ldnsutils",
    "ldns-verify-zone": "ldnsutils",
    "dig": "bind9-dnsutils",
    "pkcs11-tool": "opensc",
    "nsenter": "util-linux",
    "unshare": "util-linux",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "signers: Knot, PowerDNS, OpenDNSSEC and ldns-signzone through the shim (root, Debian packages)"
    )


def require(*programs: str) -> None:
    """Fails (never skips) when a program is missing, naming its package."""
    missing = [p for p in programs if shutil.which(p, path=BASE_PATH) is None]
    if missing:
        pkgs = sorted({PACKAGES.get(p, "?") for p in missing})
        pytest.fail(
            f"signer test prerequisite missing: {', '.join(missing)} (apt-get install {' '.join(pkgs)}; "
            "ci/packages.txt lists them)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the signer tests need root (daemon users, mount namespaces, p11-kit module files)", pytrace=False)


def require_system_python() -> None:
    """The module embeds the interpreter it was built with; daemons running as their own users
    with a clean environment can only start one whose stdlib is the system's (a pyenv build under
    /root is unreadable for them, and without its environment does not find itself)."""
    base = Path(sys.base_prefix).resolve()
    if base not in (Path("/usr"), Path("/usr/local")):
        pytest.fail(
            f"the signer tests need the shim built with the system's python3 (this one is under {base}); "
            "run ci/test with PYTHON=/usr/bin/python3",
            pytrace=False,
        )


def sc4dnssec_cli() -> str:
    exe = shutil.which("sc4dnssec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.fail("sc4dnssec CLI not found next to the test interpreter (pip install the project)", pytrace=False)
    return exe


@dataclass
class Result:
    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\n-> exit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


@dataclass
class DaemonUser:
    """A system user a daemon runs as, with its own copy of the token and its own audit log."""

    name: str
    uid: int
    gid: int


@dataclass
class Bench:
    """One test's work directory, the token, and the environment every signing process gets.

    ``env`` is the whole environment of a signing process: a plain PATH, the card's variables
    (SOFTHSM2_CONF, PCSCLITE_CSOCK_NAME) and the shim's (backend, mask config, audit log); nothing
    is inherited from the test runner, so a variable that does not reach a daemon shows up as a
    failure here as it would in the field."""

    card: Any
    work: Path
    module: str
    cli: str
    audit_log: Path
    env: dict[str, str]
    user: DaemonUser | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- processes ---------------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        as_user: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 300,
        prefix: Sequence[str] = (),
    ) -> Result:
        cmd = [*prefix, *map(str, argv)]
        kw = self._user_kw() if as_user else {}
        proc = subprocess.run(
            cmd,
            env=self.env if env is None else env,
            cwd=cwd or self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        res = Result(cmd, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"command failed:\n{res.explain()}")
        return res

    def popen(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log: Path,
        *,
        as_user: bool = False,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        kw = self._user_kw() if as_user else {}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*prefix, *map(str, argv)],
                env=self.env if env is None else env,
                cwd=self.work,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kw,
            )
        self.procs.append(proc)
        return proc

    def _user_kw(self) -> dict[str, Any]:
        assert self.user is not None, "as_user without become()"
        return {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}

    # -- the daemon's own user ------------------------------------------------------------------------
    def become(self, name: str) -> DaemonUser | None:
        """Prepares the bench for daemons running as ``name`` (as Debian runs them).

        The token goes with the user: SoftHSM's token directory is copied and handed to it (a
        SoftHSM token is files its user must write). The audit log is created owned by the user,
        mode 0600: writable by the daemon and by nobody else. Returns None on the virtual card,
        whose pcscd socket lives in the session harness's private directory (mode 0700): there the
        daemons run as root."""
        if self.card.kind not in ("softhsm", "softhsm-cardlike"):
            return None
        pw = pwd.getpwnam(name)
        user = DaemonUser(name, pw.pw_uid, pw.pw_gid)
        conf = Path(self.card.env["SOFTHSM2_CONF"])
        m = re.search(r"(?m)^directories\.tokendir\s*=\s*(.+)$", conf.read_text())
        assert m, f"no tokendir in {conf}"
        tokens = self.work / "tokens"
        shutil.copytree(m.group(1).strip(), tokens)
        new_conf = self.work / "softhsm2.conf"
        new_conf.write_text(re.sub(r"(?m)^directories\.tokendir\s*=.*$", f"directories.tokendir = {tokens}",
                                   conf.read_text()))
        self.env["SOFTHSM2_CONF"] = str(new_conf)
        self.audit_log.unlink(missing_ok=True)
        fd = os.open(self.audit_log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.chown(self.audit_log, user.uid, user.gid)
        self.user = user
        self.chown(tokens)
        return user

    def chown(self, *paths: Path) -> None:
        assert self.user is not None
        for p in paths:
            for root, dirs, files in os.walk(p):
                os.chown(root, self.user.uid, self.user.gid)
                for f in dirs + files:
                    os.chown(os.path.join(root, f), self.user.uid, self.user.gid)
            os.chown(p, self.user.uid, self.user.gid)

    def mkdir(self, name: str, owned: bool = False) -> Path:
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        if owned and self.user is not None:
            self.chown(d)
        return d

    # -- the audit log ---------------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def check_audit(self, min_card_signs: int, progs: Sequence[str] = ()) -> Counter[str]:
        """The log verifies, holds >= min_card_signs signatures made by the token, and every program
        in ``progs`` loaded the shim with the backend it was given (the env reached it).

        Returns the number of token signatures per program."""
        res = self.run([self.cli, "audit", "verify", self.audit_log], check=False)
        assert res.returncode == 0, f"sc4dnssec audit verify failed:\n{res.explain()}"
        records = self.records()
        signs: Counter[str] = Counter(
            str(r["prog"]) for r in records if r.get("fn") in ("C_Sign", "C_SignFinal") and r.get("src") == "card"
            and r.get("rv") == "CKR_OK"
        )
        assert sum(signs.values()) >= min_card_signs, (
            f"{sum(signs.values())} signatures by the token in the audit log ({dict(signs)}), want >= {min_card_signs}"
        )
        backends = {
            (str(r["prog"]), (r.get("args") or {}).get("backend")) for r in records if r.get("kind") == "config"
        }
        for prog in progs:
            seen = {b for p, b in backends if p == prog}
            assert seen == {self.card.module}, f"{prog}: the shim's backend was {seen or 'never configured'}"
        if self.user is not None:
            st = self.audit_log.stat()
            assert (st.st_uid, st.st_mode & 0o777) == (self.user.uid, 0o600), (
                f"audit log owner/mode {st.st_uid}/{oct(st.st_mode & 0o777)}, want {self.user.name}/0600"
            )
        return signs

    def daemon_uids(self, prog: str) -> set[int]:
        return {int(r["uid"]) for r in self.records() if r.get("prog") == prog and "uid" in r}

    # -- teardown --------------------------------------------------------------------------------------
    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> int | None:
    """SIGTERM to the process group, SIGKILL after ``timeout``; the exit status (None if it hung)."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        return None


@pytest.fixture
def bench(card: Any, request: pytest.FixtureRequest) -> Iterator[Bench]:
    """A work directory outside pytest's private temp dir (daemon users must reach it)."""
    require_system_python()
    work = Path(tempfile.mkdtemp(prefix="sc4signers-"))
    work.chmod(0o755)
    conf = work / "sc4dnssec.toml"
    conf.write_text(config_dumps(card.shim_conf))
    audit = work / "audit.jsonl"
    env = {
        "PATH": BASE_PATH,
        "LANG": "C.UTF-8",
        **card.env,
        "SC4DNSSEC_BACKEND": card.module,
        "SC4DNSSEC_CONF": str(conf),
        "SC4DNSSEC_AUDIT_LOG": str(audit),
    }
    b = Bench(card, work, module_path(), sc4dnssec_cli(), audit, env)
    try:
        yield b
    finally:
        b.stop_all()
        if RECORD_DIR and audit.exists():
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
            shutil.copy(audit, Path(RECORD_DIR) / f"{name}-{card.kind}.jsonl")
        shutil.rmtree(work, ignore_errors=True)


# -- zones and DNS -------------------------------------------------------------------------------------
def write_zone(path: Path) -> None:
    """The example zone of every signer test (sc4testkit.zones), ``ZONE_NAMES`` hosts under ORIGIN."""
    zones.write_zone(path, ORIGIN, ZONE_NAMES)


def dig(port: int, name: str, rtype: str, *extra: str, wait: int = 2) -> str:
    """dig +dnssec against 127.0.0.1:port, run without any PKCS#11 environment.

    ``wait``: seconds dig waits for an answer; an AXFR from a server that signs on the fly (PowerDNS)
    takes one card operation per RRset."""
    return subprocess.run(
        ["dig", "+dnssec", "+norec", f"+time={wait}", "+tries=1", "-p", str(port), "@127.0.0.1", *extra, name, rtype],
        capture_output=True,
        text=True,
        timeout=wait + 60,
        env={"PATH": BASE_PATH},
    ).stdout


def answer(dig_output: str) -> list[list[str]]:
    """Records of the answer section (or of a whole AXFR listing), each split into fields."""
    axfr = ";; ANSWER SECTION" not in dig_output
    rows, in_answer = [], axfr
    for line in dig_output.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            in_answer = True
        elif not line.strip():
            in_answer = in_answer and axfr
        elif not line.startswith(";") and in_answer:
            rows.append(line.split())
    return rows


def rrsig_tags(records: list[list[str]], covered: str) -> set[int]:
    return {int(f[10]) for f in records if len(f) > 10 and f[3] == "RRSIG" and f[4] == covered}


def dnskey_tags(records: list[list[str]]) -> dict[int, int]:
    """key tag -> flags, for the DNSKEY records (tag computed per RFC 4034 appendix B)."""
    import base64

    out = {}
    for f in records:
        if len(f) > 7 and f[3] == "DNSKEY":
            flags, proto, alg = int(f[4]), int(f[5]), int(f[6])
            rdata = flags.to_bytes(2, "big") + bytes([proto, alg]) + base64.b64decode("".join(f[7:]))
            acc = sum(b << 8 if i % 2 == 0 else b for i, b in enumerate(rdata))
            acc += (acc >> 16) & 0xFFFF
            out[acc & 0xFFFF] = flags
    return out


def wait_for(probe: Any, what: str, timeout: float = 60, interval: float = 0.3, alive: Any = None) -> Any:
    """Polls ``probe()`` until it returns something truthy (readiness, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what} after {timeout} s (last: {last!r})")


class Served:
    """The daemons serving the zone on ``port`` (named, log): every wait through :meth:`wait` fails
    at once, with the daemon's log, when one of them exits."""

    def __init__(self, port: int, *daemons: tuple[str, subprocess.Popen[bytes], Path]) -> None:
        self.port = port
        self.daemons = list(daemons)

    def add(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.daemons.append((name, proc, log))

    def alive(self) -> None:
        for name, proc, log in self.daemons:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{log.read_text()[-4000:]}")

    def wait(self, probe: Any, what: str, **kw: Any) -> Any:
        return wait_for(probe, what, alive=self.alive, **kw)

    def answer(self, name: str, rtype: str, **kw: Any) -> list[list[str]]:
        return answer(dig(self.port, name, rtype, **kw))

    def signed_dnskey(self) -> tuple[list[list[str]], int]:
        """The zone's first signed DNSKEY answer, and the tag of its one key, which signed it."""
        def signed() -> list[list[str]] | None:
            rows = self.answer(ORIGIN, "DNSKEY")
            return rows if rrsig_tags(rows, "DNSKEY") else None

        rows = self.wait(signed, f"{self.daemons[0][0]}'s signed DNSKEY answer")
        tags = dnskey_tags(rows)
        assert len(tags) == 1 and rrsig_tags(rows, "DNSKEY") == set(tags), rows
        return rows, next(iter(tags))


def verify_ldns(bench: Bench, zone: Path) -> str:
    """ldns-verify-zone, with no PKCS#11 environment."""
    res = bench.run(["ldns-verify-zone", zone], check=False, env={"PATH": BASE_PATH})
    assert res.returncode == 0, (
        f"ldns-verify-zone rejects the zone:\n{res.explain()}\n--- {zone} ---\n{zone.read_text()[:3000]}"
    )
    return res.stdout + res.stderr


def zone_records(path: Path) -> list[list[str]]:
    """A signer's text output as [owner, ttl, class, type, rdata...] rows (Knot writes no class)."""
    rows = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith((";", "$")):
            continue
        f = line.split(";", 1)[0].split()
        if len(f) >= 4 and f[1].isdigit():
            if f[2] != "IN":
                f.insert(2, "IN")
            rows.append(f)
    return rows
