"""shim/ceremony/bind.py on its own: the schedule and policy it writes, what it refuses, and how it
runs tools. A recording runner stands in for BIND here; test_offline_ksk.py runs the real tools."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shim.ceremony import bind

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KSK_BASE = "Kexample.test.+013+29807"


class Recorder:
    """Answers each tool with a canned stdout and records the argv and environment it was given."""

    def __init__(self, answers: Mapping[str, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), dict(env)))
        key = next((k for k in self.answers if k in argv), argv[0])
        return subprocess.CompletedProcess(list(argv), 0, self.answers.get(key, ""), "")


def _ksk(tmp_path: Path) -> bind.KskRef:
    base = tmp_path / "ksk" / KSK_BASE
    base.parent.mkdir()
    return bind.KskRef("pkcs11:token=virtualcard%201;object=ksk.example.test;pin-source=/p", base)


def test_schedule_follows_the_dps_and_maps_to_bind_refresh() -> None:
    s = bind.Schedule.days(30, start=START)
    assert (s.resign, s.validity, s.refresh) == (timedelta(days=10), timedelta(days=15), timedelta(days=5))
    assert s.bind_times() == ["-i", "20261201120000", "-e", "20261231120000"]
    conf = bind.policy_conf(s)
    for line in ("offline-ksk yes;", "signatures-refresh P5D;", "signatures-validity-dnskey P15D;",
                 "dnskey-ttl 3600;", "zsk key-directory lifetime P90D algorithm ecdsap256sha256;"):
        assert line in conf


@pytest.mark.parametrize(
    "kw",
    [
        {"start": START.replace(tzinfo=None), "end": START + timedelta(days=1)},
        {"start": START, "end": START},
        {"start": START, "end": START + timedelta(days=30), "resign": timedelta(days=15)},
        {"start": START, "end": START + timedelta(days=30), "algorithm": 5},
    ],
)
def test_schedule_refuses_what_bind_would_misread(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        bind.Schedule(**kw)  # type: ignore[arg-type]


def test_ksk_ref_reads_tag_algorithm_and_uri(tmp_path: Path) -> None:
    ksk = _ksk(tmp_path)
    assert (ksk.tag, ksk.algorithm, ksk.token, ksk.label) == (29807, 13, "virtualcard 1", "ksk.example.test")
    assert ksk.key_file.name == f"{KSK_BASE}.key" and ksk.private_file.name == f"{KSK_BASE}.private"


def test_a_pin_value_uri_is_refused_before_any_tool_runs(tmp_path: Path) -> None:
    rec = Recorder({})
    env = bind.ToolEnv(signing={}, runner=rec)
    with pytest.raises(ValueError, match="pin-source"):
        bind.ksk_from_card("example.test", tmp_path, "pkcs11:token=t;object=k;pin-value=123456", env)
    assert rec.calls == []


def test_an_skr_bundle_without_the_ksk_signature_is_refused(tmp_path: Path) -> None:
    ksk = _ksk(tmp_path)
    skr = (
        ";; SignedKeyResponse 1.0 20261201120000 (Tue Dec  1 12:00:00 2026)\n"
        "example.test. 3600 IN DNSKEY 256 3 13 AAAA\n"
        "example.test. 3600 IN RRSIG DNSKEY 13 2 3600 20261216120000 20261201110000 11111 example.test. AAAA\n"
        ";; SignedKeyResponse 1.0 20261211120000 (Fri Dec 11 12:00:00 2026)\n"
        "example.test. 3600 IN RRSIG DNSKEY 13 2 3600 20261226120000 20261211110000 29807 example.test. AAAA\n"
    )
    rec = Recorder({"sign": skr})
    env = bind.ToolEnv(signing={"OPENSSL_CONF": "/c"}, runner=rec)
    with pytest.raises(bind.CeremonyToolError, match="20261201120000"):
        bind.sign_ksr("example.test", tmp_path, ksk, tmp_path / "x.ksr", bind.Schedule.days(20, start=START), env)
    argv, used = rec.calls[0]
    assert used == {"OPENSSL_CONF": "/c"} and argv[argv.index("-K") + 1] == str(ksk.base.parent)
    assert not (tmp_path / "example.test.skr").exists()


def test_tools_get_only_the_environment_their_role_needs(tmp_path: Path) -> None:
    rec = Recorder({"dnssec-dsfromkey": "example.test. IN DS 29807 13 2 ABCD\n"})
    env = bind.ToolEnv(signing={"OPENSSL_CONF": "/c", "SC4DNSSEC_AUDIT_LOG": "/a"}, runner=rec, module="/m.so")
    ksk = _ksk(tmp_path)
    bind.export_ds("example.test", tmp_path, ksk, env)
    assert rec.calls[-1][1] == {}
    assert env.card == {"SC4DNSSEC_AUDIT_LOG": "/a"}
    seed = bind.seed_kernel_from_card(tmp_path, ksk, env, nbytes=32)
    argv, used = rec.calls[-1]
    assert used == {"SC4DNSSEC_AUDIT_LOG": "/a"}
    assert argv[:3] == ["pkcs11-tool", "--module", "/m.so"] and "virtualcard 1" in argv and "/dev/random" in argv
    assert seed.nbytes == 32


def test_a_failing_tool_raises_with_its_output(tmp_path: Path) -> None:
    def fail(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 1, "", "dnssec-ksr: fatal: no such policy")

    with pytest.raises(bind.CeremonyToolError, match="no such policy"):
        bind.ToolEnv(signing={}, runner=fail).run(["dnssec-ksr"], tmp_path)


def test_host_runner_never_passes_the_callers_openssl_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENSSL_CONF", "/etc/provider-early.cnf")
    out = bind.HostRunner()(["env"], {"X_SC4": "1"}, tmp_path).stdout
    assert "OPENSSL_CONF" not in out and "X_SC4=1" in out
