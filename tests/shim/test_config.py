"""The configuration file: what tests and tools write is what the shim reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim import config
from shim.constants import CKM


def test_dumps_round_trips_through_load(tmp_path: Path) -> None:
    conf = {"backend": "/usr/lib/card.so",
            "audit": {"path": "/var/log/a.jsonl", "fsync": "always", "on_failure": "fail-open", "syslog": True},
            "mask": {"functions": ["C_Verify", "C_CreateObject"], "mechanisms": ["CKM_ECDSA_SHA256", 0x1041]},
            "compat": {"advertise_keygen": False},
            "policy": {"allow_functions": ["C_Initialize", "C_Sign"]}}
    path = tmp_path / "sc4.toml"
    path.write_text(config.dumps(conf))
    got = config.load({"SC4DNSSEC_CONF": str(path), "HOME": str(tmp_path)})
    assert (got.backend, got.audit_path, got.audit_fsync, got.audit_on_failure, got.audit_syslog) == (
        "/usr/lib/card.so", "/var/log/a.jsonl", "always", "fail-open", True)
    assert got.mask_functions == {"C_Verify", "C_CreateObject"}
    assert got.mask_mechanisms == {CKM.ECDSA_SHA256, CKM.ECDSA}
    assert got.advertise_keygen is False and got.allow_functions == {"C_Initialize", "C_Sign"}


def test_environment_overrides_the_file_and_the_seed_variable_is_the_fallback(tmp_path: Path) -> None:
    path = tmp_path / "sc4.toml"
    path.write_text(config.dumps({"backend": "/from/file.so"}))
    env = {"SC4DNSSEC_CONF": str(path), "HOME": str(tmp_path), "PKCS11_LIBRARY_PATH": "/seed.so"}
    assert config.load(env).backend == "/from/file.so"
    assert config.load({**env, "SC4DNSSEC_BACKEND": "/from/env.so"}).backend == "/from/env.so"
    assert config.load({"HOME": str(tmp_path), "PKCS11_LIBRARY_PATH": "/seed.so"}).backend == "/seed.so"


@pytest.mark.parametrize(("conf", "names"), [
    ({"audit": {"fsync": "sometimes"}}, "[audit] fsync"),
    ({"mask": {"functions": ["C_Nope"]}}, "C_Nope"),
    ({"mask": {"mechanisms": ["CKM_NOPE"]}}, "CKM_NOPE"),
    ({"policy": {"allow_functions": "C_Sign"}}, "[policy] allow_functions"),
])
def test_a_bad_setting_is_named(tmp_path: Path, conf: dict, names: str) -> None:  # type: ignore[type-arg]
    path = tmp_path / "sc4.toml"
    path.write_text(config.dumps(conf))
    with pytest.raises(config.ConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        config.load({"SC4DNSSEC_CONF": str(path), "HOME": str(tmp_path)})
