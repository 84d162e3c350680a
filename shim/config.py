"""Configuration: environment first, then the TOML file, then defaults.

=====================  ==========================  =================================
setting                environment                 TOML (``SC4DNSSEC_CONF``)
=====================  ==========================  =================================
backend module         ``SC4DNSSEC_BACKEND``       ``backend = "/path/module.so"``
                       (``PKCS11_LIBRARY_PATH``
                       as the seed's fallback)
audit log              ``SC4DNSSEC_AUDIT_LOG``     ``[audit] path``
=====================  ==========================  =================================

Everything else lives in the file only; see README "Configuration".
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shim.constants import CKM
from shim.functions import BY_NAME

DEFAULT_AUDIT_DIR = "/var/log/sc4dnssec"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class Config:
    backend: str | None
    audit_path: str
    audit_fsync: str = "none"
    audit_on_failure: str = "fail-closed"
    audit_syslog: bool = False
    audit_syslog_socket: str = "/dev/log"
    mask_functions: frozenset[str] = frozenset()
    mask_mechanisms: frozenset[int] = frozenset()
    advertise_keygen: bool = True
    allow_functions: frozenset[str] | None = None
    source: str = "defaults"
    raw: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)


def default_audit_path(env: Mapping[str, str]) -> str:
    """/var/log/sc4dnssec/audit.jsonl where writable, else the user's state dir.

    named runs as an unprivileged user; a default it cannot write would make
    fail-closed refuse every call, so fall back to a per-user location."""
    system = Path(DEFAULT_AUDIT_DIR)
    try:
        system.mkdir(mode=0o750, parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return str(system / "audit.jsonl")
    except OSError:
        pass
    state = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or "/tmp", ".local", "state")
    return os.path.join(state, "sc4dnssec", "audit.jsonl")


def _mechanism(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        name = value.removeprefix("CKM_")
        if name in CKM.__members__:
            return int(CKM[name])
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise ConfigError(f"[mask] mechanisms: unknown mechanism {value!r}")


def _functions(values: object, setting: str) -> frozenset[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{setting}: expected a list of C_* function names")
    unknown = [v for v in values if v not in BY_NAME]
    if unknown:
        raise ConfigError(f"{setting}: unknown PKCS#11 functions {unknown}")
    return frozenset(values)


def _choice(value: object, setting: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{setting}: {value!r} is not one of {allowed}")
    return str(value)


def load(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    data: dict[str, object] = {}
    source = "defaults"
    conf_path = env.get("SC4DNSSEC_CONF")
    if conf_path:
        try:
            with open(conf_path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"SC4DNSSEC_CONF={conf_path}: {e}") from e
        source = conf_path
    audit = data.get("audit", {})
    mask = data.get("mask", {})
    compat = data.get("compat", {})
    policy = data.get("policy", {})
    if not all(isinstance(s, dict) for s in (audit, mask, compat, policy)):
        raise ConfigError("[audit], [mask], [compat] and [policy] must be tables")
    assert isinstance(audit, dict) and isinstance(mask, dict)
    assert isinstance(compat, dict) and isinstance(policy, dict)
    backend = env.get("SC4DNSSEC_BACKEND") or data.get("backend") or env.get("PKCS11_LIBRARY_PATH")
    if backend is not None and not isinstance(backend, str):
        raise ConfigError("backend: expected a path")
    allow = policy.get("allow_functions")
    return Config(
        backend=backend or None,
        audit_path=env.get("SC4DNSSEC_AUDIT_LOG") or str(audit.get("path") or default_audit_path(env)),
        audit_fsync=_choice(audit.get("fsync", "none"), "[audit] fsync", ("none", "always")),
        audit_on_failure=_choice(
            audit.get("on_failure", "fail-closed"), "[audit] on_failure", ("fail-closed", "fail-open")
        ),
        audit_syslog=bool(audit.get("syslog", False)),
        audit_syslog_socket=str(audit.get("syslog_socket", "/dev/log")),
        mask_functions=_functions(mask.get("functions", []), "[mask] functions"),
        mask_mechanisms=frozenset(_mechanism(m) for m in mask.get("mechanisms", [])),
        advertise_keygen=bool(compat.get("advertise_keygen", True)),
        allow_functions=None if allow is None else _functions(allow, "[policy] allow_functions"),
        source=source,
        raw=data,
    )


def dumps(conf: Mapping[str, object]) -> str:
    """The TOML text of a configuration dict ``load`` accepts (top-level keys, then one level of
    tables): for tools and tests that write SC4DNSSEC_CONF files.  JSON's string, number, boolean
    and array syntax is valid TOML for the values the configuration uses."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in conf.items() if not isinstance(v, Mapping)]
    for k, v in conf.items():
        if isinstance(v, Mapping):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"
