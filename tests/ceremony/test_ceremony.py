"""The key ceremony (``sc4dnssec ceremony``) on three virtual SmartCard-HSMs (a primary, two
clones) through pcscd, OpenSC's tools and the shim, without the BIND steps (tests/ceremony/
test_offline_ksk.py has those).

One ceremony runs through the module, as an operator would meet it: a step out of order, a
card-changing call outside any step, a crash between a key generation and its record, a clone
whose DKEK differs, then the same clone with the right DKEK, and the close.  Each test asserts on
what one of those did, from the CLI's output, the card's own state and the audit log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shim.audit import signing
from shim.ceremony import cards, record, transport
from shim.ceremony.steps import sha256_file
from virtualcard import schsm
from virtualcard.pytest_plugin import VirtualCard

pytestmark = pytest.mark.ceremony

ZONE = "example.com"
PIN = schsm.DEFAULT_PIN
SO_PIN = schsm.DEFAULT_SO_PIN
TIMEOUT = 600


@dataclass
class Run:
    """One ceremony, and what each of its moments left behind."""

    dir: Path
    cards: list[VirtualCard]
    secrets: Path
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.dir / "audit.jsonl"

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_bytes().splitlines()]

    def state(self) -> dict[str, Any]:
        return json.loads((self.dir / "ceremony.json").read_text())


def sc4(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shim.cli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env or dict(os.environ))


def _raw_share(vc: VirtualCard, share: bytes) -> None:
    """A DKEK share straight into one card (the test's own card, not the ceremony's way in)."""
    t = cards.Tools(vc.isolated_env(), "", {})
    t.import_share(vc.info.reader or "", share)


def _reinitialise(vc: VirtualCard, share: bytes) -> None:
    env = {**vc.isolated_env(), "P": PIN, "S": SO_PIN}
    subprocess.run(["sc-hsm-tool", "--initialize", "--so-pin", "env:S", "--pin", "env:P", "--dkek-shares", "1",
                    "--label", "KSK 3 of 3"], env=env, check=True, capture_output=True, timeout=120)
    _raw_share(vc, share)


@pytest.fixture(scope="module")
def ceremony(card_factory: Callable[..., VirtualCard], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    vcs = [card_factory(kind="virtual-schsm") for _ in range(3)]
    base = tmp_path_factory.mktemp("ceremony")
    sec = base / "secrets"
    sec.mkdir(mode=0o700)
    for name, value in (("pin", PIN), ("so-pin", SO_PIN), ("share1", "correct horse 1"),
                        ("share2", "battery staple 2"), ("transport", "zsk transport phrase")):
        (sec / name).write_text(value + "\n")
    priv, pub = signing.keygen(str(sec))
    zsk = base / "Kexample.com.+013+11111.private"
    zsk.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    run = Run(base / "c", vcs, sec)
    run.notes.update(checkpoint_pub=pub, zsk=zsk)
    r = run.results
    r["start"] = sc4("ceremony", "start", str(run.dir), "--zone", ZONE, "--date", "20261201",
                     "--primary", vcs[0].info.reader or "", "--clone", vcs[1].info.reader or "",
                     "--clone", vcs[2].info.reader or "",
                     "--participant", "MC=Mallory Chair", "--participant", "SO=Sofia Officer",
                     "--participant", "SA=Sam Admin", "--participant", "IW=Iris Witness",
                     "--pin-file", str(sec / "pin"), "--so-pin-file", str(sec / "so-pin"),
                     "--share-password-file", str(sec / "share1"), "--share-password-file", str(sec / "share2"),
                     "--checkpoint-key", priv, "--transport-passphrase-file", str(sec / "transport"),
                     "--without-bind", "--zsk-material", str(zsk))
    assert r["start"].returncode == 0, r["start"].stderr
    run.notes["records_after_start"] = len(run.records()) if run.log.exists() else 0
    r["out_of_order"] = sc4("ceremony", "step", str(run.dir), "backup")
    run.notes["records_after_out_of_order"] = len(run.records()) if run.log.exists() else 0
    r["init"] = sc4("ceremony", "step", str(run.dir), "init-cards")
    assert r["init"].returncode == 0, r["init"].stdout + r["init"].stderr
    # a card-changing call from another process while no step is open
    env = {**os.environ, "SC4DNSSEC_CONF": str(run.dir / "shim.toml"), "P": PIN}
    env.pop("SC4DNSSEC_BACKEND", None)
    env.pop("SC4DNSSEC_AUDIT_LOG", None)
    slot = cards.Tools(env, sc4("module-path").stdout.strip(), {}).slot_of(vcs[0].info.reader or "")
    r["outside"] = subprocess.run(["pkcs11-tool", "--module", sc4("module-path").stdout.strip(), "--slot",
                                   slot.slot_id, "--login", "--pin", "env:P", "--keypairgen", "--key-type",
                                   "EC:prime256v1", "--label", "rogue"], env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT)
    r["ksk"] = sc4("ceremony", "step", str(run.dir), "generate-ksk")
    assert r["ksk"].returncode == 0, r["ksk"].stdout + r["ksk"].stderr
    # A crash after the key was generated but before the ceremony wrote that down: the step is left
    # "started" without its operation, as ceremony.json would be.
    doc = run.state()
    del doc["steps"]["generate-ksk"]["ops"]["primary:generate"]
    doc["steps"]["generate-ksk"]["status"] = "started"
    (run.dir / "ceremony.json").write_text(json.dumps(doc))
    r["ksk_resumed"] = sc4("ceremony", "step", str(run.dir), "generate-ksk")
    assert r["ksk_resumed"].returncode == 0, r["ksk_resumed"].stdout + r["ksk_resumed"].stderr
    # clone 2 re-initialised with another DKEK: the backup must refuse it
    _reinitialise(vcs[2], bytes(range(32)))
    r["backup_wrong_dkek"] = sc4("ceremony", "step", str(run.dir), "backup")
    run.notes["clone2_key_after_refusal"] = schsm.HSMState(vcs[2].state_dir).key_ids()
    run.notes["blob_sha_after_first_run"] = sha256_file(run.dir / "files" / "ksk.wrapped")
    # the operator gives clone 2 the ceremony's DKEK again (here: the primary's, as one raw share)
    dkek = bytes.fromhex(schsm.HSMState(vcs[0].state_dir).counters.dkek)
    _reinitialise(vcs[2], dkek)
    r["backup"] = sc4("ceremony", "step", str(run.dir), "backup")
    assert r["backup"].returncode == 0, r["backup"].stdout + r["backup"].stderr
    r["rest"] = sc4("ceremony", "run", str(run.dir))
    assert r["rest"].returncode == 0, r["rest"].stdout + r["rest"].stderr
    r["status"] = sc4("ceremony", "status", str(run.dir))
    try:
        yield run
    finally:
        for vc in vcs:  # free the readers for the session's other tests
            vc.stop()


def test_a_step_out_of_order_is_refused_before_any_card_operation(ceremony: Run) -> None:
    r = ceremony.results["out_of_order"]
    assert r.returncode == 3, r.stdout + r.stderr
    assert "step backup refused: step init-cards comes first" in r.stderr
    assert ceremony.notes["records_after_out_of_order"] == ceremony.notes["records_after_start"]
    assert "backup" in ceremony.state()["steps"] and ceremony.state()["steps"]["backup"]["runs"][0][
        "seq_after"] > 0  # the later, real run; the refused one left no run behind
    assert len(ceremony.state()["steps"]["backup"]["runs"]) == 2  # the DKEK refusal, then the good run


def test_each_step_says_what_it_does_and_its_audit_range(ceremony: Run) -> None:
    out = ceremony.results["init"].stdout
    assert "== step 1/5: init-cards" in out and "DKEK" in out
    assert "audit log: seq " in out and "C_GetTokenInfo" in out
    ksk = ceremony.results["ksk"].stdout
    assert "C_GenerateKeyPair CKR_OK" in ksk
    state = ceremony.state()
    ranges = [(state["steps"][s]["runs"][-1]["seq_after"], state["steps"][s]["runs"][-1]["seq_last"])
              for s in ("init-cards", "generate-ksk", "backup")]
    assert all(a < b for a, b in ranges), ranges
    status = ceremony.results["status"].stdout
    assert "every step is done" in status and "generate-ksk  done" in status


def test_the_cards_share_one_dkek_and_each_clone_signs_for_the_primary_public_key(ceremony: Run) -> None:
    state = ceremony.state()
    kcvs = {c["kcv"] for c in state["cards"]}
    assert len(kcvs) == 1 and state["dkek_kcv"] in kcvs
    assert len({c["serial"] for c in state["cards"]}) == 3
    pubs = [schsm.HSMState(vc.state_dir).get_key(state["ksk"]["key_ref"]) for vc in ceremony.cards]
    assert all(p is not None for p in pubs)
    numbers = {p.public_key().public_numbers() for p in pubs if p is not None}  # type: ignore[union-attr]
    assert len(numbers) == 1  # the same key on all three cards
    ops = state["steps"]["backup"]["ops"]
    assert {"clone 1:prove", "clone 2:prove"} <= ops.keys()
    assert "primary's public key verifies it" in ceremony.results["backup"].stdout


def test_a_clone_with_another_dkek_is_refused(ceremony: Run) -> None:
    r = ceremony.results["backup_wrong_dkek"]
    assert r.returncode == 1
    assert "clone 2 refused: its DKEK key check value is" in r.stderr
    assert ceremony.notes["clone2_key_after_refusal"] == []  # nothing was unwrapped into it
    run = ceremony.state()["steps"]["backup"]["runs"][0]
    assert "clone 2 refused" in run["error"]


def test_an_interrupted_ceremony_resumes_without_repeating_a_card_operation(ceremony: Run) -> None:
    recs = [r for r in ceremony.records() if r["kind"] == "call"]
    gens = [r for r in recs if r["fn"] == "C_GenerateKeyPair" and r["rv"] == "CKR_OK"]
    assert len(gens) == 1  # generated once, although the step ran twice
    assert "already on the primary card" in ceremony.results["ksk_resumed"].stdout
    runs = ceremony.state()["steps"]["generate-ksk"]["runs"]
    assert len(runs) == 2
    # the resumed backup wrapped nothing again and unwrapped clone 1 once; one proof signature per clone
    out = ceremony.results["backup"].stdout
    assert "primary:wrap: already done" in out and "clone 1:unwrap: already done" in out
    assert sha256_file(ceremony.dir / "files" / "ksk.wrapped") == ceremony.notes["blob_sha_after_first_run"]
    signs = [r for r in recs if r["fn"] == "C_Sign" and r["rv"] == "CKR_OK"]
    assert len(signs) == 2


def test_a_card_changing_call_outside_the_ceremony_window_is_denied_and_recorded(ceremony: Run) -> None:
    r = ceremony.results["outside"]
    assert r.returncode != 0 and "C_GenerateKeyPair failed: rv = unknown PKCS11 error (0x1b)" in r.stderr
    # (0x1b is CKR_ACTION_PROHIBITED; pkcs11-tool has no name for it)
    denied = [rec for rec in ceremony.records() if rec["kind"] == "call" and rec["rv"] == "CKR_ACTION_PROHIBITED"]
    assert [d["fn"] for d in denied] == ["C_GenerateKeyPair"]
    assert "no ceremony step is open" in denied[0]["error"]
    intents = [rec for rec in ceremony.records() if rec["kind"] == "intent" and rec["seq"] == denied[0]["seq"] - 1]
    assert intents and intents[0]["fn"] == "C_GenerateKeyPair"  # announced, then refused
    assert "rogue" not in json.dumps(schsm.HSMState(ceremony.cards[0].state_dir).files())


def test_the_record_hashes_match_the_files(ceremony: Run) -> None:
    page = ceremony.dir / "record.html"
    facts = record.read_facts(page)
    names = {f["name"]: f["sha256"] for f in facts["files"]}
    assert {"dkek-share-1.pbe", "dkek-share-2.pbe", "ksk.pub.der", "ksk.wrapped", "zsks.sealed"} <= names.keys()
    for name, digest in names.items():
        assert sha256_file(ceremony.dir / "files" / name) == digest
        assert digest in page.read_text()
    text = page.read_text()
    for who in ("Sofia Officer", "Sam Admin", "Mallory Chair", "Iris Witness"):
        assert who in text
    assert facts["checkpoint"]["sig"] in text and facts["dkek"]["kcv"] in text
    assert all(c["serial"] in text for c in facts["cards"])
    assert text.count("<td></td><td></td></tr>") >= 4  # a blank signature and date line per participant


def test_the_ceremony_audit_log_verifies_with_its_checkpoint(ceremony: Run) -> None:
    pub = ceremony.notes["checkpoint_pub"]
    r = sc4("audit", "verify", "--key", pub, "--checkpoints", f"{ceremony.log}.checkpoints",
            "--require-checkpoint", str(ceremony.log))
    assert r.returncode == 0, r.stdout + r.stderr
    v = sc4("ceremony", "verify-record", str(ceremony.dir / "record.html"), "--key", pub)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "the record, its files and the audit log agree" in v.stdout
    cp = ceremony.state()["checkpoint"]
    last = ceremony.records()[-1]
    assert last["kind"] == "checkpoint" and last["seq"] == cp["seq"]


def test_verify_record_finds_a_changed_file_and_a_changed_log(ceremony: Run, tmp_path: Path) -> None:
    pub = ceremony.notes["checkpoint_pub"]
    files = tmp_path / "files"
    files.mkdir()
    for p in (ceremony.dir / "files").iterdir():
        (files / p.name).write_bytes(p.read_bytes())
    (files / "ksk.wrapped").write_bytes(b"\x00" + (files / "ksk.wrapped").read_bytes()[1:])
    v = sc4("ceremony", "verify-record", str(ceremony.dir / "record.html"), "--key", pub, "--files", str(files))
    assert v.returncode == 4 and "file ksk.wrapped: SHA-256 differs" in v.stdout
    log = tmp_path / "audit.jsonl"
    lines = ceremony.log.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"kind":"call"', b'"kind":"call" ', 1)
    log.write_bytes(b"".join(lines))
    (tmp_path / "audit.jsonl.checkpoints").write_bytes(Path(f"{ceremony.log}.checkpoints").read_bytes())
    v = sc4("ceremony", "verify-record", str(ceremony.dir / "record.html"), "--key", pub, "--log", str(log))
    assert v.returncode == 4 and "does not verify" in v.stdout, v.stdout


def test_the_zsk_material_travels_sealed_and_opens_with_the_passphrase(ceremony: Run, tmp_path: Path) -> None:
    bundle = ceremony.dir / "files" / "zsks.sealed"
    zsk: Path = ceremony.notes["zsk"]
    assert zsk.read_bytes() not in bundle.read_bytes()
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    assert sc4("ceremony", "unseal", str(bundle), str(tmp_path / "x"), "--passphrase-file", str(bad)).returncode == 1
    r = sc4("ceremony", "unseal", str(bundle), str(tmp_path / "out"), "--passphrase-file",
            str(ceremony.secrets / "transport"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / zsk.name).read_bytes() == zsk.read_bytes()
    with pytest.raises(transport.TransportError):
        transport.unseal(bundle, tmp_path / "y", passphrase=b"zsk transport phrase!")


def test_no_secret_reaches_the_output_the_record_or_the_log(ceremony: Run) -> None:
    seen = "".join(r.stdout + r.stderr for r in ceremony.results.values())
    seen += (ceremony.dir / "record.html").read_text() + (ceremony.dir / "ceremony.json").read_text()
    log = ceremony.log.read_text()
    for secret in (PIN, SO_PIN, "correct horse 1", "battery staple 2", "zsk transport phrase"):
        assert secret not in seen, secret
        assert secret not in log or secret == PIN, secret  # six digits may occur in a hash by chance
    logins = [r for r in ceremony.records() if r["kind"] == "call" and r["fn"] == "C_Login"]
    assert logins and all(PIN not in json.dumps(r["args"]) for r in logins)
