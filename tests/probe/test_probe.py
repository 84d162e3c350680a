"""``sc4dnssec probe`` over the card under test (``--card=softhsm|softhsm-cardlike|virtual``).

The verdicts must agree with the conformance suite: the stored per-card results for the
configuration the cards run with, and a live replay of the same sequences for a configuration
that breaks some consumers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from probe_helpers import ProbeRun, write_config

from conformance import sequence as seqmod
from conformance.client import Worker
from conformance.leaks import leak_report
from conformance.replay import discover, instantiate, judge
from shim import probe
from shim.functions import FUNCTIONS
from shim.locate import module_path
from shim.probe import requirements

RESULTS = Path(__file__).resolve().parents[2] / "conformance" / "results"
# conformance status -> the probe's status for that sequence
AGREES = {"pass": {"pass"}, "fail": {"fail"}, "skip": {"unavailable"}}


def _sequence_statuses(report: dict[str, Any]) -> dict[str, str]:
    return {name: status for c in report["consumers"] for name, status in c["sequences"].items()}


def test_shipped_requirements_table_is_derived_from_the_sequences() -> None:
    from shim.probe.requirements_table import DOC

    derived = requirements.table_doc(requirements.derive_all())
    assert DOC == derived, "stale: run python -m shim.probe.regenerate"
    names = {s["name"] for s in derived["sequences"]}
    assert {c for c, _ in requirements.CONSUMERS.items()} == {s["consumer"] for s in derived["sequences"]}
    assert "powerdns-sign" in names and "opendnssec-keygen" in names


def test_verdicts_agree_with_the_stored_conformance_results(card: Any, run_probe: ProbeRun) -> None:
    stored = json.loads((RESULTS / f"{card.kind}.json").read_text())
    report = run_probe()
    statuses = _sequence_statuses(report)
    assert statuses, report["warnings"]
    disagree = {name: (stored[name]["status"], got) for name, got in statuses.items()
                if name in stored and got not in AGREES[stored[name]["status"]]}
    assert not disagree, disagree
    for c in report["consumers"]:
        seqs = [stored[n]["status"] for n in c["sequences"] if n in stored and not n.endswith("keygen")]
        want = "accepted" if seqs and all(s == "pass" for s in seqs) else "refused"
        assert c["signing"] == want, c


def test_software_supplements_are_named_per_consumer(card: Any, run_probe: ProbeRun) -> None:
    by = {c["consumer"]: c for c in run_probe()["consumers"]}
    assert probe.verdict.SUPPLEMENTS["digest"] in by["powerdns"]["supplements"]
    assert probe.verdict.SUPPLEMENTS["verify"] in by["bind916"]["supplements"]
    assert probe.verdict.SUPPLEMENTS["session-objects"] in by["bind916"]["supplements"]
    if card.kind == "virtual":  # OpenSC lists no key-pair generation for PIV
        assert probe.verdict.SUPPLEMENTS["keygen-advertised"] in by["bind916"]["supplements"]
        assert by["bind920"]["keygen"] == "unavailable" and by["opendnssec"]["keygen"] == "unavailable"
    else:
        assert by["bind920"]["keygen"] == "available"


def test_keys_are_listed_with_their_public_keys(card: Any, run_probe: ProbeRun) -> None:
    report = run_probe()
    assert "audit" not in {w["code"] for w in report["warnings"]}  # every call paired with its record
    privs = [k for k in report["keys"] if k["class"] == "private key"]
    assert {k["type"] for k in privs} >= {"EC", "RSA"}
    assert all(k.get("spki_sha256") for k in privs), privs
    if card.kind == "virtual":
        assert all(k.get("certificate") for k in privs), privs
    rows = {m["mechanism"]: m for m in report["mechanisms"]}
    assert rows["CKM_ECDSA"]["source"].startswith("card")
    assert rows["CKM_SHA256"]["source"] == "software"


DIGESTS_DENIED = sorted({f.name for f in FUNCTIONS} - {"C_DigestInit", "C_Digest", "C_DigestUpdate", "C_DigestFinal"})


def _replay(card: Any, conf: Path, tmp_path: Path, names: list[str]) -> dict[str, str]:
    """Each sequence replayed through the shim under ``conf``, as tests/conformance does."""
    direct = Worker(card.module, dict(os.environ, **card.env), "direct")
    try:
        bindings = discover(direct, card.token_label, card.pin, {k: (v.label, v.id) for k, v in card.keys.items()})
    finally:
        direct.close()
    env = dict(os.environ, **card.env, SC4DNSSEC_CONF=str(conf), SC4DNSSEC_AUDIT_LOG=str(tmp_path / "replay.jsonl"))
    env.pop("SC4DNSSEC_BACKEND", None)
    w = Worker(module_path(), env, "shim")
    out = {}
    try:
        w.bind(bindings)
        for name in names:
            seq = seqmod.load(seqmod.SEQUENCES_DIR / f"{name}.jsonl")
            w.run([{"fn": "C_Finalize", "args": {}}])
            w.reset()
            steps = instantiate(seq)
            results = w.run(steps)
            failed = judge(seq, steps, results, bindings).first_failure or leak_report(w, steps, results)
            out[name] = "fail" if failed else "pass"
    finally:
        w.close()
    return out


def test_a_policy_that_breaks_consumers_gives_the_verdicts_a_replay_gives(card: Any, run_probe: ProbeRun,
                                                                           tmp_path: Path) -> None:
    conf = write_config(tmp_path / "nodigest.toml", card, tmp_path / "audit.jsonl",
                        policy={"allow_functions": DIGESTS_DENIED})
    report = run_probe(config=conf)
    statuses = _sequence_statuses(report)
    names = ["powerdns-sign", "bind916-signzone-ecdsa", "knot-sign", "bind920-signzone-ec", "opendnssec-signer"]
    replayed = _replay(card, conf, tmp_path, names)
    assert replayed["powerdns-sign"] == "fail" and replayed["knot-sign"] == "pass"  # the config bites
    assert {n: statuses[n] for n in names} == replayed
    by = {c["consumer"]: c for c in report["consumers"]}
    assert (by["powerdns"]["signing"], by["bind916"]["signing"], by["knot"]["signing"]) == (
        "refused", "refused", "accepted")
    assert any("CKM_SHA256" in w for w in by["powerdns"]["why"]), by["powerdns"]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shim.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_exits_non_zero_for_a_named_consumer_that_would_fail(card: Any, tmp_path: Path, pin_file: Path) -> None:
    env = dict(os.environ, **card.env)
    env.pop("SC4DNSSEC_BACKEND", None)
    good = write_config(tmp_path / "good.toml", card, tmp_path / "audit.jsonl")
    bad = write_config(tmp_path / "bad.toml", card, tmp_path / "audit.jsonl",
                       policy={"allow_functions": DIGESTS_DENIED})
    base = ["probe", "--pin-source", str(pin_file), "--token", card.token_label, "--json"]
    r = _cli([*base, "--config", str(good), "--for", "bind920", "--for", "powerdns"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["exit"] == 0 and card.pin not in r.stdout and card.pin not in r.stderr
    r = _cli([*base, "--config", str(bad), "--for", "knot"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _cli([*base, "--config", str(bad), "--for", "knot", "--for", "powerdns"], env)
    assert r.returncode == probe.EXIT_FAILS, r.stdout + r.stderr
    # no PIN: signing cannot be verified
    r = _cli(["probe", "--config", str(good), "--token", card.token_label, "--for", "bind920"], env)
    assert r.returncode == probe.EXIT_UNVERIFIED, r.stdout + r.stderr
    assert "not verified" in r.stdout
    r = _cli(["probe", "--for", "nosuch"], env)
    assert r.returncode == probe.EXIT_USAGE
    r = _cli([*base, "--config", str(good), "--for", "bind920:keygen"], env)
    assert r.returncode == (probe.EXIT_FAILS if card.kind == "virtual" else probe.EXIT_OK), r.stdout + r.stderr


def test_text_report_names_slots_keys_mechanisms_and_consumers(card: Any, tmp_path: Path, pin_file: Path) -> None:
    env = dict(os.environ, **card.env)
    env.pop("SC4DNSSEC_BACKEND", None)
    conf = write_config(tmp_path / "good.toml", card, tmp_path / "audit.jsonl")
    r = _cli(["probe", "--config", str(conf), "--pin-source", str(pin_file), "--token", card.token_label], env)
    assert r.returncode == 0, r.stderr
    for section in ("slots", "keys", "mechanisms signers use", "consumers", "BIND 9.20 + pkcs11-provider",
                    "OpenDNSSEC", "Knot DNS", "PowerDNS", "BIND 9.16 native"):
        assert section in r.stdout
    assert card.token_label in r.stdout and card.pin not in r.stdout


def test_a_piv_key_without_a_certificate_is_reported_invisible(card_kind: str, request: pytest.FixtureRequest,
                                                                tmp_path: Path) -> None:
    if card_kind != "virtual":
        pytest.skip("needs the virtual card stack (--card=virtual)")
    card_factory = request.getfixturevalue("card_factory")
    from virtualcard.provision import make_key, provision_defaults
    from virtualcard.state import CardState

    state = CardState(tmp_path / "state")
    state.initialise()
    provision_defaults(state)
    state.put_key(0x9C, make_key("EC:secp256r1"))  # a key, but no certificate for it
    vc = card_factory(state_dir=tmp_path / "state")
    env = vc.isolated_env()
    conf = write_config(tmp_path / "c.toml", vc.info, tmp_path / "audit.jsonl")
    pin = tmp_path / "pin"
    pin.write_text(vc.info.pin)
    pin.chmod(0o600)
    report = probe.run(probe.Options(config=str(conf), pin_source=str(pin), env=env))
    ids = {k["id"] for k in report["keys"] if k["class"] == "private key"}
    assert "02" not in ids and "01" in ids  # 9C is CKA_ID 02: OpenSC does not show it
    piv = [w for w in report["warnings"] if w["code"] == "piv-certificate"]
    assert piv and "9C" in piv[0]["message"] and "9A" not in piv[0]["message"], report["warnings"]
