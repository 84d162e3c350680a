"""Fixtures for the stock-BIND flows: the Debian 13 root, the shim installed in it, and signers.

A *signer* is a token with an EC P-256 and an RSA-2048 key pair that BIND reaches through
pkcs11-provider, on one backend:

- ``softhsm-cardlike``: SoftHSM through the shim, masked to a card's function set: the
  ``softhsm-cardlike`` kind of the token table (sc4testkit/tokens.py), its SoftHSM
  ``slots.mechanisms`` and its shim ``[mask]``.
- ``piv``: the virtual PIV card (pcscd + vpcd + our Python card) through OpenSC and the shim.
- ``schsm``: the virtual SmartCard-HSM (Nitrokey HSM 2) through OpenSC's sc-hsm driver and the
  shim: it generates keys through PKCS#11, so flow 4 puts the KSK on the card.
- ``softhsm-direct`` / ``piv-direct`` / ``schsm-direct``: the same tokens without the shim (the module preloaded with
  LD_PRELOAD, per consumers-bind920.md) — the baselines that tell a shim failure from a harness or
  BIND failure, and the timing reference.

Missing prerequisites fail with a message naming them; nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from sc4testkit.tokens import SOFTHSM, SOFTHSM_CARDLIKE, VIRTUAL, VIRTUAL_SCHSM, VIRTUAL_YKCS11, TokenKind
from sc4testkit.trixie import Missing, Shim, Trixie, install_shim
from shim.config import dumps as config_dumps

SOFTHSM_PIN = "1234"
SOFTHSM_SO_PIN = "5678"
SOFTHSM_TOKEN = "sc4bind"
EC_LABEL, EC_ID = "ecc256key", "01"
RSA_LABEL, RSA_ID = "rsa2048key", "02"

# The signers: a token kind of the token table, through the shim or through its own module.
BACKENDS: dict[str, tuple[TokenKind, bool]] = {
    "softhsm-cardlike": (SOFTHSM_CARDLIKE, True),
    "piv": (VIRTUAL, True),
    "softhsm-direct": (SOFTHSM, False),
    "piv-direct": (VIRTUAL, False),
    "schsm": (VIRTUAL_SCHSM, True),
    "schsm-direct": (VIRTUAL_SCHSM, False),
    "piv-ykcs11": (VIRTUAL_YKCS11, True),
}

TIMINGS: list[tuple[str, str, float]] = []


def record_time(test: str, what: str, seconds: float) -> None:
    TIMINGS.append((test, what, seconds))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("BIND flow timings")
    for test, what, seconds in TIMINGS:
        terminalreporter.write_line(f"{seconds:8.2f} s  {what:<38} {test}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow_card: on the PIV backend, use the card with real-card latency")


def fail_missing(e: Exception) -> None:
    pytest.fail(f"BIND prerequisite missing: {e}", pytrace=False)


@pytest.fixture(scope="session")
def trixie(tmp_path_factory: pytest.TempPathFactory) -> Trixie:
    """The Debian 13 root (built or reused), with pytest's base temp dir shared into it."""
    base = str(tmp_path_factory.getbasetemp().resolve())
    try:
        return Trixie.ensure(binds=[base])
    except Missing as e:
        fail_missing(e)
        raise


@pytest.fixture(scope="session")
def shim(trixie: Trixie, tmp_path_factory: pytest.TempPathFactory) -> Shim:
    """The shim built and installed inside the root (sc4testkit.trixie.install_shim), once per session."""
    start = time.monotonic()
    try:
        installed = install_shim(trixie, tmp_path_factory.mktemp("shim"))
    except Missing as e:
        fail_missing(e)
        raise
    record_time("(session)", "shim build+install in the root", time.monotonic() - start)
    return installed


@dataclass
class Signer:
    """A token BIND can use, and the environments to use it with."""

    name: str
    trixie: Trixie
    work: Path
    token: str
    pin_file: Path
    ec_select: str  # the URI attributes that select the EC key pair (object=... or id=%..)
    rsa_select: str
    sign_env: dict[str, str]  # for signing processes: OPENSSL_CONF + backend
    backend_env: dict[str, str]  # to reach the backend directly (pkcs11-tool), without OPENSSL_CONF
    backend: str  # the real PKCS#11 module
    can_generate: bool
    shim: Shim | None = None
    audit_log: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def uri(self, key: str = "ec", pin: bool = True) -> str:
        select = self.ec_select if key == "ec" else self.rsa_select
        uri = f"pkcs11:token={self.token};{select}"
        return f"{uri};pin-source={self.pin_file}" if pin else uri

    def run(
        self,
        cmd: list[str | os.PathLike[str]],
        signing: bool = False,
        cwd: Path | None = None,
        check: bool = True,
        timeout: float = 600,
    ):
        env = self.sign_env if signing else {}
        return self.trixie.run(cmd, env=env, cwd=cwd or self.work, check=check, timeout=timeout)

    def pkcs11_tool(self, *args: str, check: bool = True):
        return self.trixie.run(
            ["pkcs11-tool", "--module", self.backend, *args], env=self.backend_env, cwd=self.work, check=check
        )

    def audit(self) -> list[dict[str, object]]:
        """The audit records (sc4dnssec audit show --json), or [] without the shim."""
        if self.shim is None or self.audit_log is None:
            return []
        out = self.trixie.run([self.shim.cli, "audit", "show", "--json", self.audit_log]).stdout
        text = out.strip()
        if text.startswith("["):
            return list(json.loads(text))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def audit_verify(self):
        assert self.shim is not None and self.audit_log is not None
        return self.trixie.run([self.shim.cli, "audit", "verify", self.audit_log], check=False)


def _openssl_cnf(trixie: Trixie, work: Path, module: str) -> Path:
    cnf = work / "openssl.cnf"
    cnf.write_text(trixie.openssl_cnf(module))
    return cnf


def _softhsm_token(trixie: Trixie, work: Path, kind: TokenKind) -> tuple[str, dict[str, str]]:
    softhsm = trixie.find_lib("libsofthsm2.so")
    tokens = work / "tokens"
    tokens.mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(kind.softhsm_conf(str(tokens)))
    env = {"SOFTHSM2_CONF": str(conf)}
    trixie.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            SOFTHSM_TOKEN,
            "--pin",
            SOFTHSM_PIN,
            "--so-pin",
            SOFTHSM_SO_PIN,
        ],
        env=env,
        cwd=work,
    )
    for kt, label, kid in (("EC:prime256v1", EC_LABEL, EC_ID), ("rsa:2048", RSA_LABEL, RSA_ID)):
        trixie.run(
            [
                "pkcs11-tool",
                "--module",
                softhsm,
                "--token-label",
                SOFTHSM_TOKEN,
                "--login",
                "--pin",
                SOFTHSM_PIN,
                "--keypairgen",
                "--key-type",
                kt,
                "--label",
                label,
                "--id",
                kid,
            ],
            env=env,
            cwd=work,
        )
    return softhsm, env


def _make_softhsm(name: str, kind: TokenKind, trixie: Trixie, work: Path, shim: Shim | None) -> Signer:
    pin_file = work / "pin"
    pin_file.write_text(SOFTHSM_PIN)  # no newline: some consumers read the file verbatim
    softhsm, env = _softhsm_token(trixie, work, kind)
    selects = (f"object={EC_LABEL}", f"object={RSA_LABEL}")
    if shim is None:
        cnf = _openssl_cnf(trixie, work, softhsm)
        # SoftHSM loaded by pkcs11-provider (RTLD_DEEPBIND) segfaults unless preloaded.
        sign_env = {**env, "OPENSSL_CONF": str(cnf), "LD_PRELOAD": softhsm}
        return Signer(name, trixie, work, SOFTHSM_TOKEN, pin_file, *selects, sign_env, env, softhsm, True)
    conf = work / "sc4dnssec.toml"
    conf.write_text(config_dumps(kind.shim_conf()))
    audit_log = work / "audit.jsonl"
    cnf = _openssl_cnf(trixie, work, shim.module)
    sign_env = {
        **env,
        "OPENSSL_CONF": str(cnf),
        "SC4DNSSEC_BACKEND": softhsm,
        "SC4DNSSEC_CONF": str(conf),
        "SC4DNSSEC_AUDIT_LOG": str(audit_log),
    }
    return Signer(
        name,
        trixie,
        work,
        SOFTHSM_TOKEN,
        pin_file,
        *selects,
        sign_env,
        env,
        softhsm,
        True,
        shim=shim,
        audit_log=audit_log,
    )


@dataclass
class VirtualCard:
    state: Path
    exports: dict[str, str]


def _parse_exports(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            value = m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[m.group(1)] = value
    return out


def _virtualcard_cmd() -> list[str]:
    exe = shutil.which(
        "virtualcard", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    )
    if exe:
        return [exe]
    return [sys.executable, "-m", "virtualcard.cli"]


def _card_up(state: Path, latency_ms: float | None, family: str = "piv") -> tuple[list[str], dict[str, str]]:
    cmd = _virtualcard_cmd()
    extra = [] if latency_ms is None else ["--latency-ms", str(latency_ms)]
    extra += ["--card", family]
    try:
        proc = subprocess.run([*cmd, "up", str(state), *extra], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as e:
        proc = None
        error = f"`virtualcard up` could not run: {e}"
    if proc is None or proc.returncode != 0:
        if proc is not None:
            error = (
                f"`virtualcard up {state}` failed (exit {proc.returncode}): the virtual PIV card "
                f"(issue 4; needs pcscd and vsmartcard-vpcd on the host)\n{proc.stdout}\n{proc.stderr}"
            )
        subprocess.run([*cmd, "down", str(state)], capture_output=True, timeout=120)
        fail_missing(Missing(error))
    exports = _parse_exports(proc.stdout)
    if "PCSCLITE_CSOCK_NAME" not in exports:
        subprocess.run([*cmd, "down", str(state)], capture_output=True, timeout=120)
        fail_missing(Missing(f"`virtualcard up` printed no PCSCLITE_CSOCK_NAME export:\n{proc.stdout}"))
    return cmd, exports


def _card_for_session(state: Path, latency_ms: float | None, family: str = "piv") -> Iterator[VirtualCard]:
    """`virtualcard up STATE_DIR` on the host (pcscd + vpcd + the Python card), down at the end."""
    cmd, exports = _card_up(state, latency_ms, family)
    try:
        yield VirtualCard(state, exports)
    finally:
        subprocess.run([*cmd, "down", str(state)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def virtual_card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualCard]:
    yield from _card_for_session(tmp_path_factory.mktemp("virtualcard"), None)


@pytest.fixture(scope="session")
def schsm_card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualCard]:
    """The virtual SmartCard-HSM (`virtualcard up --card sc-hsm`): generates keys through PKCS#11."""
    yield from _card_for_session(tmp_path_factory.mktemp("schsm"), None, "sc-hsm")


@pytest.fixture(scope="session")
def ykcs11_card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualCard]:
    """The virtual PIV card in readers named Yubico*, which libykcs11 alone serves (the CLI's
    `virtualcard up` names its readers for OpenSC): started through the harness, labels as the
    host's libykcs11 reports them (the root's reports the same)."""
    from virtualcard.harness import YUBICO_READER_NAME, Harness, HarnessError
    from virtualcard.pytest_plugin import start_virtual_card

    run = Path(tempfile.mkdtemp(prefix="vcard-"))  # AF_UNIX paths are short
    h = Harness(run, readers=2, reader_prefix=YUBICO_READER_NAME)
    try:
        h.start()
        card = start_virtual_card(h, tmp_path_factory.mktemp("ykcs11"), kind=VIRTUAL_YKCS11)
    except (HarnessError, OSError, LookupError) as e:
        h.stop()
        shutil.rmtree(run, ignore_errors=True)
        fail_missing(Missing(f"the virtual PIV card for libykcs11 did not come up: {e}"))
        raise
    info = card.info
    exports = {"PCSCLITE_CSOCK_NAME": h.env["PCSCLITE_CSOCK_NAME"], "VIRTUALCARD_PIN": info.pin,
               "VIRTUALCARD_TOKEN_LABEL": info.token_label,
               **{f"VIRTUALCARD_{k.upper()}_{what}": v for k, key in info.keys.items()
                  for what, v in (("ID", key.id.hex()), ("LABEL", key.label))}}
    try:
        yield VirtualCard(card.state_dir, exports)
    finally:
        h.stop()
        shutil.rmtree(run, ignore_errors=True)


SLOW_CARD_MS = 200.0


@pytest.fixture(scope="session")
def slow_virtual_card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualCard]:
    """A second virtual card that takes SLOW_CARD_MS per private-key operation, like a real card."""
    yield from _card_for_session(tmp_path_factory.mktemp("slowcard"), SLOW_CARD_MS)


def _make_piv(
    name: str, trixie: Trixie, work: Path, shim: Shim | None, card: VirtualCard, kind: TokenKind = VIRTUAL
) -> Signer:
    ex = card.exports
    missing = [
        k
        for k in (
            "VIRTUALCARD_PIN",
            "VIRTUALCARD_TOKEN_LABEL",
            "VIRTUALCARD_EC_ID",
            "VIRTUALCARD_RSA_ID",
            "VIRTUALCARD_EC_LABEL",
            "VIRTUALCARD_RSA_LABEL",
        )
        if k not in ex
    ]
    if missing:
        fail_missing(Missing(f"`virtualcard up` printed no {', '.join(missing)}: {ex}"))
    pin_file = work / "pin"
    pin_file.write_text(ex["VIRTUALCARD_PIN"])
    # The root's OpenSC (0.26) or libykcs11, not the host's that SC4DNSSEC_BACKEND in the exports names.
    opensc = trixie.find_lib("libykcs11.so" if kind.module == "ykcs11" else "opensc-pkcs11.so")
    env = {"PCSCLITE_CSOCK_NAME": ex["PCSCLITE_CSOCK_NAME"]}
    token = ex["VIRTUALCARD_TOKEN_LABEL"]
    listing = trixie.run(["pkcs11-tool", "--module", opensc, "-L"], env=env, check=False)
    plain = token.removesuffix(" (UserPIN)")  # the host's OpenSC 0.23 appends it, the root's 0.26 does not
    if kind.card_family == "sc-hsm" and f"token label        : {plain}\n" in listing.stdout:
        token = plain
    if listing.returncode != 0 or token not in listing.stdout:
        fail_missing(
            Missing(
                f"OpenSC in the Debian 13 root does not see the virtual card {token!r}:\n{listing.explain()}"
            )
        )
    selects = (f"id=%{ex['VIRTUALCARD_EC_ID']}", f"id=%{ex['VIRTUALCARD_RSA_ID']}")
    if shim is None:
        cnf = _openssl_cnf(trixie, work, opensc)
        # opensc-pkcs11 under RTLD_DEEPBIND mixes allocators (free(): invalid pointer): preload it.
        sign_env = {**env, "OPENSSL_CONF": str(cnf), "LD_PRELOAD": opensc}
        return Signer(name, trixie, work, token, pin_file, *selects, sign_env, env, opensc, kind.can_generate)
    audit_log = work / "audit.jsonl"
    cnf = _openssl_cnf(trixie, work, shim.module)
    sign_env = {
        **env,
        "OPENSSL_CONF": str(cnf),
        "SC4DNSSEC_BACKEND": opensc,
        "SC4DNSSEC_AUDIT_LOG": str(audit_log),
    }
    # Through the shim the card key is selected by the private key's label: the shim presents a
    # public key object under that label (OpenSC names it "... pubkey"), so id= would match two
    # public objects (the card's and the shim's) and BIND refuses: "public key is invalid".
    selects = tuple(f"object={quote(ex[f'VIRTUALCARD_{k}_LABEL'], safe='')}" for k in ("EC", "RSA"))
    return Signer(
        name,
        trixie,
        work,
        token,
        pin_file,
        *selects,
        sign_env,
        env,
        opensc,
        kind.can_generate,
        shim=shim,
        audit_log=audit_log,
    )


@pytest.fixture(params=list(BACKENDS))
def signer(request: pytest.FixtureRequest, trixie: Trixie, tmp_path: Path) -> Signer:
    name = request.param
    kind, through_shim = BACKENDS[name]
    work = tmp_path.resolve()
    shim_ = request.getfixturevalue("shim") if through_shim else None
    if kind.source == "softhsm":
        return _make_softhsm(name, kind, trixie, work, shim_)
    if kind.card_family == "sc-hsm":
        return _make_piv(name, trixie, work, shim_, request.getfixturevalue("schsm_card"), kind)
    if kind.module == "ykcs11":
        return _make_piv(name, trixie, work, shim_, request.getfixturevalue("ykcs11_card"), kind)
    slow = request.node.get_closest_marker("slow_card") is not None
    card = request.getfixturevalue("slow_virtual_card" if slow else "virtual_card")
    return _make_piv(name, trixie, work, shim_, card)
