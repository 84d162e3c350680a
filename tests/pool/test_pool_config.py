"""``[pool]`` in the configuration: what loads, and what ``sc4dnssec config check`` reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shim import config


def _load(tmp_path: Path, text: str) -> config.Config:
    conf = tmp_path / "sc4dnssec.toml"
    conf.write_text(text)
    return config.load({"SC4DNSSEC_CONF": str(conf)})


def test_a_pool_section_loads_members_by_serial_or_label(tmp_path: Path) -> None:
    cfg = _load(tmp_path, 'backend = "/x.so"\n[pool]\nlabel = "zsk pool"\ntimeout_ms = 1500\n'
                          'members = [{ name = "left", serial = "0123", pin_file = "/etc/pin" }, { label = "B" }]\n')
    assert cfg.pool is not None
    assert cfg.pool.label == "zsk pool" and cfg.pool.timeout_s == 1.5 and cfg.pool.separate_modules
    assert [(m.name, m.serial, m.label, m.pin_file) for m in cfg.pool.members] == [
        ("left", "0123", None, "/etc/pin"), ("B", None, "B", None)]


@pytest.mark.parametrize(("members", "why"), [
    ('[{ serial = "1", label = "x" }]', "exactly one of serial or label"),
    ('[{ name = "a" }]', "exactly one of serial or label"),
    ('[{ serial = "1", pin = "1234" }]', "unknown keys ['pin']"),
    ('[{ serial = "1", pin_file = "/p", pin_env = "P" }]', "at most one of pin_file or pin_env"),
    ('[{ serial = "1" }, { name = "1", label = "y" }]', "names must differ"),
    ("[]", "non-empty list"),
])
def test_a_bad_member_is_refused_with_the_reason(tmp_path: Path, members: str, why: str) -> None:
    with pytest.raises(config.ConfigError, match=r"\[pool\] members") as e:
        _load(tmp_path, f"[pool]\nmembers = {members}\n")
    assert why in str(e.value)


def test_config_check_names_the_bad_pool_setting_and_its_line(tmp_path: Path) -> None:
    conf = tmp_path / "sc4dnssec.toml"
    conf.write_text('[pool]\nlabel = "this label is far longer than thirty-two bytes"\ntimeout_ms = 0\n')
    out = subprocess.run([sys.executable, "-m", "shim.cli", "config", "check", str(conf)], capture_output=True,
                         text=True)
    assert out.returncode != 0
    assert f"{conf}:2: error: [pool] label: at most 32 bytes" in out.stdout + out.stderr
    assert f"{conf}:3: error: [pool] timeout_ms" in out.stdout + out.stderr
    assert f"{conf}:1: error: [pool] members: missing" in out.stdout + out.stderr
