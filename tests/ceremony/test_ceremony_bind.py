"""The whole ceremony, BIND steps included, where BIND 9.20 is (a Debian 13 host, or
``ci/virtualcard-debian13 tests/ceremony -m ceremony --card=virtual-schsm`` from Debian 12): three
virtual SmartCard-HSMs (the primary and two clones), the default 2-of-2 DKEK shares, then dnssec-ksr
keygen/request/sign through pkcs11-provider and the shim, the DS, the sealed ZSKs and the record.
Then the online side from the ceremony's own outputs: the sealed ZSKs unsealed, the KSK's public
``.key``, the SKR and the DS go to a named that never loads the card's module
(tests/ceremony/online.py), which imports the SKR and serves the zone.

With ``--ceremony-example DIR`` (tests/ceremony/conftest.py) it is the ceremony of the committed
example record instead: six participants, run in DIR and left there. The secrets stay in the
test's own temporary directory."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shim.audit import signing
from shim.ceremony import bind, record
from shim.openssl_conf import PROVIDER_MODULE
from tests.ceremony import online
from virtualcard import schsm
from virtualcard.pytest_plugin import VirtualCard

pytestmark = [
    pytest.mark.ceremony,
    pytest.mark.skipif(importlib.util.find_spec("shim.ceremony.bind") is None, reason="no shim.ceremony.bind"),
    pytest.mark.skipif(shutil.which("dnssec-ksr") is None or not os.path.exists(PROVIDER_MODULE),
                       reason="needs BIND 9.20's dnssec-ksr and pkcs11-provider (Debian 13)"),
]


def sc4(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shim.cli", *args], capture_output=True, text=True, timeout=900)


CARDS = 3  # the primary and two clones: the DPS keeps the KSK in three smartcard HSMs
EXAMPLE_PARTICIPANTS = ("MC=Morgan Chair", "SO=Sofia Officer", "SA=Sam Admin", "SC=Safe Controller",
                        "IW=Iris Witness", "EW=Ed External")


def test_the_bind_steps_make_the_ksr_skr_and_ds_with_the_ksk_on_the_card(
        card_factory: Callable[..., VirtualCard], tmp_path: Path, pytestconfig: pytest.Config) -> None:
    example = pytestconfig.getoption("ceremony_example")
    vcs = [card_factory(kind="virtual-schsm") for _ in range(CARDS)]
    try:
        _ceremony(vcs, tmp_path, Path(example).resolve() if example else None)
    finally:
        for vc in vcs:  # free the readers for the session's other tests
            vc.stop()


def _ceremony(vcs: list[VirtualCard], tmp_path: Path, example: Path | None) -> None:
    sec = tmp_path / "secrets"
    sec.mkdir(mode=0o700)
    for name, value in (("pin", schsm.DEFAULT_PIN), ("so-pin", schsm.DEFAULT_SO_PIN), ("share1", "one share"),
                        ("share2", "another share"), ("transport", "transport phrase")):
        (sec / name).write_text(value + "\n")
    priv, pub = signing.keygen(str(sec))
    participants: tuple[str, ...]
    if example is None:
        d, participants = tmp_path / "c", ("SO=Sofia Officer", "SA=Sam Admin")  # the default custodians
    else:
        assert not example.exists() or not any(example.iterdir()), f"--ceremony-example {example} is not empty"
        d, participants = example, EXAMPLE_PARTICIPANTS
    shape = [a for p in participants for a in ("--participant", p)] + [
        "--share-password-file", str(sec / "share1"), "--share-password-file", str(sec / "share2")]
    clones = [a for vc in vcs[1:] for a in ("--clone", vc.info.reader or "")]
    r = sc4("ceremony", "start", str(d), "--zone", "example.com", "--primary", vcs[0].info.reader or "", *clones,
            *shape, "--pin-file", str(sec / "pin"), "--so-pin-file", str(sec / "so-pin"), "--checkpoint-key", priv,
            "--transport-passphrase-file", str(sec / "transport"), "--period-days", "30")
    assert r.returncode == 0, r.stderr
    r = sc4("ceremony", "run", str(d))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dnssec-ksr sign: SKR example.com.skr" in r.stdout and "DS for the parent" in r.stdout
    facts = record.read_facts(d / "record.html")
    names = {f["name"] for f in facts["files"]}
    assert {"example.com.ksr", "example.com.skr", "example.com.ds", "zsks.sealed", "ksk.wrapped"} <= names
    assert [s["status"] for s in facts["steps"]] == ["done"] * 8
    signs = [s for s in facts["steps"] if s["name"] == "sign-ksr"][0]
    assert signs["seq"], "dnssec-ksr sign reached the card through the shim"
    v = sc4("ceremony", "verify-record", str(d / "record.html"), "--key", pub)
    assert v.returncode == 0, v.stdout
    _online(d, tmp_path, sec / "transport")


def _online(d: Path, tmp_path: Path, transport: Path) -> None:
    """The online signer from what the ceremony handed over: the ZSKs as sealed for transport,
    the KSK's public key file, the SKR and the DS of files/."""
    zone = "example.com"
    received = tmp_path / "received"  # the online signer's side of the transport
    u = sc4("ceremony", "unseal", str(d / "files" / "zsks.sealed"), str(received / "zsk"), "--passphrase-file",
            str(transport))
    assert u.returncode == 0, u.stderr
    assert any(p.suffix == ".private" for p in (received / "zsk").iterdir())
    state = json.loads((d / "ceremony.json").read_text())
    kskfiles = state["steps"]["zsk-keygen"]["ops"]["ksk-files"]["result"]
    ksk = bind.KskRef("", Path(kskfiles["base"]))
    assert ksk.tag == kskfiles["tag"]
    start = datetime.strptime(state["schedule_start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    schedule = bind.Schedule.days(int(state.get("period_days", 90)), start=start)
    module = state["module"]
    served = online.serve_and_check(online.HostTools(), zone, schedule, ksk, received, d / "files" / f"{zone}.skr",
                                    d / "files" / f"{zone}.ds", tmp_path / "online",
                                    [module, Path(module).name])
    sealed = {Path(p).stem for p in state["zsk_material"] if p.endswith(".private")}
    assert {bind.KskRef("", Path(n)).tag for n in sealed} == served.zsk_tags
