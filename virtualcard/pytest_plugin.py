"""pytest plugin: ``--card=KIND`` and the ``card`` fixture, over the token table
(``sc4testkit/tokens.py``: what each kind is, its SoftHSM mechanisms and its shim mask).

Enabled by the repository's root ``conftest.py`` (``pytest_plugins = ["virtualcard.pytest_plugin"]``).

- ``softhsm``: a fresh SoftHSM token in a temp dir (writable, can generate).
- ``softhsm-cardlike``: the same, restricted to what a cheap card offers (``slots.mechanisms``)
  plus a shim mask (``card.shim_conf``) hiding the functions cards lack.
- ``virtual``: a private pcscd + the virtual PIV card, driven through ``opensc-pkcs11.so``.
- ``virtual-schsm``: the same with the virtual SmartCard-HSM (OpenSC's sc-hsm driver).
- ``virtual-ykcs11``: the virtual PIV card through Yubico's ``libykcs11.so`` (readers named Yubico*).
- ``opensc``: a real card in a real reader (skipped when none); tests that change the card need
  ``--card-destructive``.

The fixture puts ``card.env`` into ``os.environ`` for the session, so in-process PyKCS11 finds
the token; subprocesses should get ``card.subprocess_env()``.  pcsc-lite reads
``PCSCLITE_CSOCK_NAME`` once per process, so one pytest process talks to one pcscd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sc4testkit.tokens import KINDS, OPENSC, SOFTHSM, TOKENS, VIRTUAL, TokenKind

from .cardinfo import CardInfo, KeyInfo, discover_keys, find_module
from .harness import YUBICO_READER_NAME, Harness, HarnessError, opensc_module, ykcs11_module
from .provision import provision_defaults, provision_schsm, schsm_token_labels
from .schsm import HSMState
from .state import CardState

__all__ = ["CardInfo", "KeyInfo", "VirtualCard"]

SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
SOFTHSM_LABEL = "sc4dnssec-test"
TEST_PIN = "123456"
SO_PIN = "12345678"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("virtualcard", "card under test")
    g.addoption(
        "--card",
        choices=KINDS,
        default=os.environ.get("SC4DNSSEC_CARD", "softhsm"),
        help="token the tests run against (default softhsm; env SC4DNSSEC_CARD)",
    )
    g.addoption(
        "--card-destructive",
        action="store_true",
        default=False,
        help="allow tests that change a real card (PIN counters, keys) with --card=opensc",
    )
    g.addoption(
        "--card-latency-ms", type=float, default=None, help="virtual card: delay per private-key operation"
    )
    g.addoption(
        "--card-pin",
        default=os.environ.get("SC4DNSSEC_CARD_PIN", TEST_PIN),
        help="user PIN of a real card (--card=opensc)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "card_destructive: changes the card (needs --card-destructive on a real card)"
    )


# -- SoftHSM ----------------------------------------------------------------------------
def softhsm_module() -> str:
    path = find_module("SOFTHSM2_MODULE", SOFTHSM_CANDIDATES)
    if path:
        return path
    raise FileNotFoundError("libsofthsm2.so not found (apt install softhsm2 or set SOFTHSM2_MODULE)")


def make_softhsm(directory: Path, kind: TokenKind = SOFTHSM) -> CardInfo:
    """A fresh SoftHSM token of ``kind`` with an EC P-256 (ecc256key, id 01) and an RSA-2048
    (rsa2048key, id 02) pair."""
    if kind.source != "softhsm":
        raise ValueError(f"{kind.name} is not a SoftHSM token kind")
    module = softhsm_module()
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(kind.softhsm_conf(str(tokens), "slots.removable = false"))
    env = {"SOFTHSM2_CONF": str(conf)}
    full = {**os.environ, **env}
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            SOFTHSM_LABEL,
            "--pin",
            TEST_PIN,
            "--so-pin",
            SO_PIN,
        ],
        env=full,
        check=True,
        capture_output=True,
    )
    keys = {
        "ec": KeyInfo("ecc256key", b"\x01", "EC", curve="secp256r1"),
        "rsa": KeyInfo("rsa2048key", b"\x02", "RSA", bits=2048),
    }
    for key, spec in ((keys["ec"], "EC:prime256v1"), (keys["rsa"], "rsa:2048")):
        subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                module,
                "--token-label",
                SOFTHSM_LABEL,
                "--login",
                "--pin",
                TEST_PIN,
                "--keypairgen",
                "--key-type",
                spec,
                "--label",
                key.label,
                "--id",
                key.id.hex(),
            ],
            env=full,
            check=True,
            capture_output=True,
        )
    return CardInfo(
        kind=kind.name,
        module=module,
        pin=TEST_PIN,
        token_label=SOFTHSM_LABEL,
        keys=keys,
        env=env,
        shim_conf=kind.shim_conf(),
        writable=kind.writable,
        can_generate=kind.can_generate,
    )


# -- virtual card ------------------------------------------------------------------------
@dataclass
class VirtualCard:
    """A virtual card in a reader of the session's private pcscd."""

    harness: Harness
    reader: int
    state_dir: Path
    info: CardInfo
    _stopped: bool = field(default=False, repr=False)

    def remove(self, wait: bool = True) -> None:
        self.harness.remove(self.reader, wait)

    def insert(self, wait: bool = True) -> None:
        self.harness.insert(self.reader, wait)

    def stop(self) -> None:
        if not self._stopped:
            self.harness.stop_card(self.reader)
            self._stopped = True

    def isolated_env(self) -> dict[str, str]:
        """Subprocess env whose OpenSC sees only this card's reader (see Harness.opensc_conf_for)."""
        return {**self.info.subprocess_env(), "OPENSC_CONF": str(self.harness.opensc_conf_for(self.reader))}

    @property
    def state(self) -> CardState:
        return CardState(self.state_dir)


def start_virtual_card(
    harness: Harness,
    state_dir: Path,
    latency_ms: float | None = None,
    profile: str | None = None,
    kind: TokenKind = VIRTUAL,
) -> VirtualCard:
    """Start (and on first use personalise) a virtual card of ``kind``'s family in a free reader."""
    module = opensc_module()
    if kind.module == "ykcs11":
        if not harness.reader_prefix.startswith("Yubico"):
            raise HarnessError("libykcs11 sees only readers named Yubico*: start the harness with YUBICO_READER_NAME")
        module = ykcs11_module()
    if kind.card_family == "sc-hsm":
        hsm = HSMState(state_dir)
        if not hsm.manufactured:
            hsm.manufacture()
        proc = harness.add_card(state_dir, latency_ms=latency_ms, profile=profile)
        serial = hsm.counters.serial
        if not hsm.counters.initialised:
            env = {**harness.env, "OPENSC_CONF": str(harness.opensc_conf_for(proc.reader))}
            provision_schsm(env, serial, module)
        pin = HSMState(state_dir).counters.pin
        labels = schsm_token_labels(serial)
    else:
        state = CardState(state_dir)
        if not state.initialised:
            provision_defaults(state)
        proc = harness.add_card(state_dir, latency_ms=latency_ms, profile=profile)
        pin, labels = state.counters.pin, (f"virtualcard-{state.counters.serial}",)
        if kind.module == "ykcs11":
            labels = (f"YubiKey PIV #{state.counters.serial}",)  # ykcs11 names the token after GET SERIAL
    deadline = time.monotonic() + 10
    found = None
    while found is None:  # pcscd reports the card before OpenSC can always bind it
        for token_label in labels:
            try:
                found = discover_keys(module, harness.env, token_label)
                break
            except LookupError:
                if time.monotonic() > deadline and token_label == labels[-1]:
                    raise
        else:
            time.sleep(0.1)
    label, keys, reader = found
    info = CardInfo(
        kind=kind.name,
        module=module,
        pin=pin,
        token_label=label,
        keys=keys,
        env=dict(harness.env),
        shim_conf=kind.shim_conf(),
        writable=kind.writable,
        can_generate=kind.can_generate,
        reader=reader,
    )
    return VirtualCard(harness, proc.reader, state_dir, info)


@pytest.fixture(scope="session")
def card_kind(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--card"))


@pytest.fixture(scope="session")
def virtual_harness(card_kind: str) -> Iterator[Harness]:
    """The session's private pcscd with 4 vpcd readers (2 vpcd instances), whatever --card says.

    4, because OpenSC's PKCS#11 module shows only the first 4 readers (max_virtual_slots 16 /
    slots_per_card 4).

    Its PCSCLITE_CSOCK_NAME goes into os.environ for the session (pcsc-lite reads it once per
    process), so in-process PyKCS11 over opensc-pkcs11.so sees these readers.
    """
    if TOKENS[card_kind].source == "reader":
        # pcsc-lite picks its socket once per process: the real reader's pcscd wins
        pytest.skip("virtual cards are not started with --card=opensc (one pcscd per process)")
    if os.environ.get("PCSCLITE_CSOCK_NAME") and "vcard-" not in os.environ["PCSCLITE_CSOCK_NAME"]:
        pytest.skip("PCSCLITE_CSOCK_NAME already points at another pcscd")
    run = Path(tempfile.mkdtemp(prefix="vcard-"))  # short: AF_UNIX paths are limited to 108 bytes
    # libykcs11 serves only readers named Yubico*; OpenSC does not mind the name
    prefix = YUBICO_READER_NAME if TOKENS[card_kind].module == "ykcs11" else "Virtual PCD"
    h = Harness(run, readers=4, reader_prefix=prefix)
    try:
        h.start()
    except (HarnessError, OSError) as e:
        shutil.rmtree(run, ignore_errors=True)
        if os.environ.get("SC4_CI"):
            # CI installs the whole stack: a missing card is a failure there, never a silent skip
            pytest.fail(f"virtual card stack unavailable in CI: {e}", pytrace=False)
        pytest.skip(f"virtual card stack unavailable: {e}")
    saved = os.environ.get("PCSCLITE_CSOCK_NAME")
    os.environ.update(h.env)
    try:
        yield h
    finally:
        h.stop()
        if saved is None:
            os.environ.pop("PCSCLITE_CSOCK_NAME", None)
        else:
            os.environ["PCSCLITE_CSOCK_NAME"] = saved
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def card(
    request: pytest.FixtureRequest, card_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CardInfo]:
    """The card under test, described by a :class:`CardInfo`; its env is in os.environ meanwhile."""
    info: CardInfo
    kind = TOKENS[card_kind]
    if kind.source == "softhsm":
        info = make_softhsm(tmp_path_factory.mktemp("softhsm"), kind)
    elif kind.source == "virtual":
        h = request.getfixturevalue("virtual_harness")
        vc = start_virtual_card(
            h,
            tmp_path_factory.mktemp("vcard-state"),
            latency_ms=request.config.getoption("--card-latency-ms"),
            kind=kind,
        )
        info = vc.info
    else:
        info = real_card(str(request.config.getoption("--card-pin")), kind)
    saved = {k: os.environ.get(k) for k in info.env}
    os.environ.update(info.env)
    try:
        yield info
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def real_card(pin: str, kind: TokenKind = OPENSC) -> CardInfo:
    if shutil.which("opensc-tool") is None:
        pytest.skip("--card=opensc: opensc-tool not installed")
    out = subprocess.run(["opensc-tool", "-l"], capture_output=True, text=True, timeout=30).stdout
    if not any(line.split()[1:2] == ["Yes"] for line in out.splitlines() if line[:1].isdigit()):
        pytest.skip(f"--card=opensc: no card in any reader (opensc-tool -l: {out.strip() or 'no readers'})")
    module = opensc_module()
    try:
        label, keys, reader = discover_keys(module, {}, None, pin)
    except LookupError as e:
        pytest.skip(f"--card=opensc: OpenSC sees no token: {e}")
    missing = {"ec", "rsa"} - keys.keys()
    if missing:
        pytest.skip(f"--card=opensc: the card has no {'/'.join(sorted(missing))} key with a certificate")
    return CardInfo(
        kind=kind.name,
        module=module,
        pin=pin,
        token_label=label,
        keys=keys,
        env={},
        shim_conf=kind.shim_conf(),
        writable=kind.writable,
        can_generate=kind.can_generate,
        reader=reader,
    )


@pytest.fixture
def card_destructive(request: pytest.FixtureRequest, card: CardInfo) -> CardInfo:
    """The card, for tests that change it: refused on a real card without --card-destructive."""
    if TOKENS[card.kind].source == "reader" and not request.config.getoption("--card-destructive"):
        pytest.skip("changes the real card: pass --card-destructive")
    return card


@pytest.fixture(scope="session")
def card_factory(
    virtual_harness: Harness, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., VirtualCard]]:
    """Start more virtual cards, each in the next free reader: ``card_factory(latency_ms=...)``."""
    started: list[VirtualCard] = []

    def factory(
        latency_ms: float | None = None,
        profile: str | None = None,
        state_dir: Path | None = None,
        kind: str = VIRTUAL.name,
    ) -> VirtualCard:
        vc = start_virtual_card(
            virtual_harness, state_dir or tmp_path_factory.mktemp("vcard-extra"), latency_ms, profile,
            kind=TOKENS[kind]
        )
        started.append(vc)
        return vc

    yield factory
    for vc in started:
        if not vc._stopped and vc.reader in virtual_harness.cards:
            vc.stop()
