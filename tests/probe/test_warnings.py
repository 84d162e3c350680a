"""The traps the probe warns about, each planted for real; and ``sc4dnssec config check``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from probe_helpers import ProbeRun, write_config

from shim import config, probe
from shim.probe import checks


def _codes(report: dict[str, Any]) -> list[str]:
    return [w["code"] for w in report["warnings"]]


def test_a_pin_file_with_a_trailing_newline_is_named_and_not_used(card: Any, run_probe: ProbeRun,
                                                                    tmp_path: Path) -> None:
    pin = tmp_path / "pin-nl"
    pin.write_text(card.pin + "\n")
    pin.chmod(0o600)
    report = run_probe(pin_source=str(pin))
    assert "pin-newline" in _codes(report)
    assert report["login"] == "no PIN given"  # a wrong PIN would cost the card a retry
    assert card.pin not in json.dumps(report)


def test_a_world_readable_pin_file_is_named(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("123456")
    pin.chmod(0o644)
    value, warnings = checks.pin_file(str(pin))
    assert value == "123456" and [w.code for w in warnings] == ["pin-source"]
    assert "123456" not in warnings[0].message


@pytest.mark.parametrize("encode", [False, True], ids=["clear", "base64"])
def test_pin_value_in_a_private_key_file_is_named_without_the_pin(tmp_path: Path, encode: bool) -> None:
    label = b"pkcs11:token=t;object=ksk;pin-value=98765432"
    value = base64.b64encode(label).decode() if encode else label.decode()
    (tmp_path / "Kexample.+013+12345.private").write_text(f"Private-key-format: v1.3\nAlgorithm: 13\nLabel: {value}\n")
    (tmp_path / "Kother.+013+00001.private").write_text("Label: pkcs11:object=zsk;pin-source=/etc/pin\n")
    warnings = checks.pin_value_files([str(tmp_path)])
    assert [w.code for w in warnings] == ["pin-value"]
    assert "Kexample" in warnings[0].message and "Kother" not in warnings[0].message
    assert "98765432" not in warnings[0].message


def test_an_unreachable_backend_fails_every_consumer(tmp_path: Path, card: Any, run_probe: ProbeRun) -> None:
    conf = tmp_path / "missing.toml"
    conf.write_text(config.dumps({"backend": str(tmp_path / "nope.so"), "audit": {"path": str(tmp_path / "a")}}))
    report = run_probe(config=conf)
    assert "backend" in _codes(report)
    assert {c["signing"] for c in report["consumers"]} == {"refused"}
    assert probe.exit_code(report, ["bind920"]) == probe.EXIT_FAILS


def test_a_backend_that_is_not_a_module_is_reported(tmp_path: Path, run_probe: ProbeRun) -> None:
    fake = tmp_path / "broken.so"
    fake.write_bytes(b"\x7fELF not really")
    conf = tmp_path / "broken.toml"
    conf.write_text(config.dumps({"backend": str(fake), "audit": {"path": str(tmp_path / "a")}}))
    report = run_probe(config=conf)
    msgs = [w["message"] for w in report["warnings"] if w["code"] == "backend"]
    assert msgs and "did not start" in msgs[0], report["warnings"]
    assert probe.exit_code(report, ["knot"]) == probe.EXIT_FAILS


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_an_audit_log_user_nobody_cannot_write_is_named(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    warnings = checks.audit_writable(str(closed / "sub" / "audit.jsonl"), "nobody")
    assert [w.code for w in warnings] == ["audit-log"] and "nobody" in warnings[0].message
    opened = Path(tempfile.mkdtemp(prefix="sc4probe-open-", dir="/tmp"))
    try:
        opened.chmod(0o1777)
        assert checks.audit_writable(str(opened / "audit.jsonl"), "nobody") == []
        (opened / "audit.jsonl").write_text("")
        (opened / "audit.jsonl").chmod(0o644)  # exists, root's, not writable by nobody
        assert [w.code for w in checks.audit_writable(str(opened / "audit.jsonl"), "nobody")] == ["audit-log"]
    finally:
        shutil.rmtree(opened)
    assert checks.audit_writable(str(closed / "audit.jsonl"), None) == []  # root can


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_probe_checks_the_audit_log_as_the_signer_user(card: Any, run_probe: ProbeRun, tmp_path: Path) -> None:
    closed = tmp_path / "logs"
    closed.mkdir(mode=0o700)
    conf = write_config(tmp_path / "c.toml", card, closed / "audit.jsonl")
    report = probe.run(probe.Options(config=str(conf), env=dict(os.environ, **card.env)))
    assert "audit-log" not in _codes(report)
    report = probe.run(probe.Options(config=str(conf), env=dict(os.environ, **card.env), user="nobody"))
    assert "audit-log" in _codes(report)


def _opensc() -> str | None:
    from virtualcard.harness import opensc_module

    try:
        return opensc_module()
    except (FileNotFoundError, OSError):
        return None


def test_pcscd_polkit_for_a_non_root_signer(tmp_path: Path) -> None:
    module = _opensc()
    if module is None or not checks.uses_pcsc(module):
        pytest.skip("OpenSC's module is not installed")
    help_2x = "Usage: pcscd [options]\n  --disable-polkit  do not check authorisations with polkit\n"
    rules = tmp_path / "rules.d"
    rules.mkdir()
    warned = checks.polkit(module, "nobody", help_2x, [rules])
    assert [w.code for w in warned] == ["polkit"] and "nobody" in warned[0].message
    assert checks.polkit(module, "root", help_2x, [rules]) == []
    assert checks.polkit(module, "nobody", "Usage: pcscd [options]\n", [rules]) == []  # pcscd 1.9: no polkit
    (rules / "60-sc4dnssec.rules").write_text(
        'polkit.addRule(function(action, subject) {\n'
        '  if ((action.id == "org.debian.pcsc-lite.access_pcsc" || action.id == "org.debian.pcsc-lite.access_card")'
        ' && subject.user == "nobody") { return polkit.Result.YES; } });\n')
    assert checks.polkit(module, "nobody", help_2x, [rules]) == []
    softhsm = shutil.which("softhsm2-util")
    if softhsm:
        from virtualcard.pytest_plugin import softhsm_module

        assert checks.polkit(softhsm_module(), "nobody", help_2x, []) == []  # no PC/SC: no polkit question


# -- config check ------------------------------------------------------------------------
def _check(tmp_path: Path, text: str) -> list[config.Problem]:
    path = tmp_path / "sc4dnssec.toml"
    path.write_text(text)
    return config.check(str(path))


def test_config_check_names_each_bad_setting_and_its_line(tmp_path: Path) -> None:
    problems = _check(tmp_path, "\n".join([
        'backend = "/usr/lib/softhsm/libsofthsm2.so"',
        "",
        "[audit]",
        'path = "/var/log/sc4dnssec/audit.jsonl"',
        'fsync = "sometimes"',
        "syslg = true",
        "",
        "[mask]",
        'mechanisms = ["CKM_NOPE"]',
        "[compat]",
        'advertise_keygen = "yes"',
        "[polcy]",
        'allow_functions = ["C_Sign"]',
    ]) + "\n")
    got = {(p.line, p.setting) for p in problems if p.error}
    assert got == {(5, "[audit] fsync"), (6, "[audit] syslg"), (9, "[mask] mechanisms"),
                   (11, "[compat] advertise_keygen"), (12, "[polcy]")}
    assert "CKM_NOPE" in next(str(p) for p in problems if p.line == 9)


def test_config_check_reports_a_syntax_error_with_its_line(tmp_path: Path) -> None:
    (p,) = _check(tmp_path, '[audit]\npath = "/var/log/x.jsonl"\nfsync = always\n')
    assert p.line == 3 and p.setting == "syntax" and p.error


def test_config_check_accepts_what_load_accepts(tmp_path: Path) -> None:
    conf = {"backend": "/usr/lib/card.so",
            "audit": {"path": "/var/log/a.jsonl", "fsync": "always", "on_failure": "fail-open", "syslog": True,
                      "syslog_socket": "/dev/log"},
            "mask": {"functions": ["C_Verify"], "mechanisms": ["CKM_ECDSA_SHA256", 0x1041]},
            "compat": {"advertise_keygen": False}, "policy": {"allow_functions": ["C_Initialize", "C_Sign"]}}
    problems = _check(tmp_path, config.dumps(conf))
    assert [p.setting for p in problems] == ["backend"] and not problems[0].error  # not on this host


@pytest.mark.parametrize(("conf", "setting"), [
    ({"audit": {"fsync": "sometimes"}}, "[audit] fsync"),
    ({"mask": {"functions": ["C_Nope"]}}, "[mask] functions"),
    ({"mask": {"mechanisms": ["CKM_NOPE"]}}, "[mask] mechanisms"),
    ({"policy": {"allow_functions": "C_Sign"}}, "[policy] allow_functions"),
])
def test_what_load_refuses_config_check_names_at_its_line(tmp_path: Path, conf: dict[str, Any], setting: str) -> None:
    path = tmp_path / "sc4.toml"
    path.write_text(config.dumps(conf))
    with pytest.raises(config.ConfigError):
        config.load({"SC4DNSSEC_CONF": str(path), "HOME": str(tmp_path)})
    (p,) = [p for p in config.check(str(path)) if p.error]
    assert p.setting == setting and p.line == 2


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('[audit]\nfsync = "always"\n')
    bad.write_text('[audit]\nfsync = "never"\n')
    run = [sys.executable, "-m", "shim.cli", "config", "check"]
    r = subprocess.run([*run, str(good)], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout
    r = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and f"{bad}:2: error: [audit] fsync" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_a_pin_file_and_config_the_signer_user_cannot_read_are_named(tmp_path: Path) -> None:
    pin, conf = tmp_path / "pin", tmp_path / "c.toml"
    pin.write_text("123456")
    conf.write_text("")
    for p in (pin, conf):
        p.chmod(0o600)
    warned = checks.readable_by("nobody", [("pin-source", str(pin)), ("config", str(conf))])
    assert [w.code for w in warned] == ["pin-source", "config"] and all("nobody" in w.message for w in warned)
    assert checks.readable_by("root", [("pin-source", str(pin))]) == []
