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
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shim.audit import files as audit_files
from shim.constants import CKM
from shim.functions import BY_NAME

DEFAULT_AUDIT_DIR = "/var/log/sc4dnssec"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class PoolMember:
    """One card of a ``[pool]``: which token (by serial or label) and where its PIN comes from.

    Without ``pin_file`` or ``pin_env`` the member is logged in with the PIN the consumer gave
    to C_Login (kept in memory for re-insertion)."""

    name: str
    serial: str | None = None
    label: str | None = None
    pin_file: str | None = None
    pin_env: str | None = None
    module: str | None = None


@dataclass(frozen=True)
class PoolConfig:
    """``[pool]``: several cards holding the same keys, presented as one token."""

    members: tuple[PoolMember, ...]
    label: str = "sc4dnssec pool"
    serial: str = "sc4pool"
    timeout_s: float = 5.0
    separate_modules: bool = True


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
    eddsa_keygen_alias: bool = True
    allow_functions: frozenset[str] | None = None
    pool: PoolConfig | None = None
    ceremony_window: str | None = None
    source: str = "defaults"
    raw: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)


def default_audit_path(env: Mapping[str, str]) -> str:
    """/var/log/sc4dnssec/audit.jsonl where writable, else the user's state dir, never a shared one
    (see ``shim.audit.files.default_path``: ``""`` when there is no home, refused by the writer)."""
    return audit_files.default_path(env, DEFAULT_AUDIT_DIR)


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
    pool = data.get("pool")
    window = policy.get("ceremony_window")
    if window is not None and (not isinstance(window, str) or not window):
        raise ConfigError("[policy] ceremony_window: expected a path")
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
        eddsa_keygen_alias=bool(compat.get("eddsa_keygen_alias", True)),
        allow_functions=None if allow is None else _functions(allow, "[policy] allow_functions"),
        pool=None if pool is None else _pool(pool),
        ceremony_window=window,
        source=source,
        raw=data,
    )


_MEMBER_KEYS = frozenset({"name", "serial", "label", "pin_file", "pin_env", "module"})


def _pool_members(value: object, setting: str) -> tuple[PoolMember, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise ConfigError(f"{setting}: expected a non-empty list of tables ({{ name = ..., serial = ... }})")
    members = []
    for i, m in enumerate(value):
        assert isinstance(m, dict)
        unknown = sorted(set(m) - _MEMBER_KEYS)
        if unknown:
            raise ConfigError(f"{setting}: member {i + 1}: unknown keys {unknown}")
        if not all(isinstance(v, str) and v for v in m.values()):
            raise ConfigError(f"{setting}: member {i + 1}: every value must be a non-empty string")
        if ("serial" in m) == ("label" in m):
            raise ConfigError(f"{setting}: member {i + 1}: give exactly one of serial or label")
        if "pin_file" in m and "pin_env" in m:
            raise ConfigError(f"{setting}: member {i + 1}: give at most one of pin_file or pin_env")
        members.append(PoolMember(name=m.get("name") or m.get("serial") or m["label"], serial=m.get("serial"),
                                  label=m.get("label"), pin_file=m.get("pin_file"), pin_env=m.get("pin_env"),
                                  module=m.get("module")))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"{setting}: member names must differ: {names}")
    return tuple(members)


def _timeout_ms(value: object, setting: str) -> float:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 600_000:
        raise ConfigError(f"{setting}: expected milliseconds, 1 to 600000, not {value!r}")
    return value / 1000


def _pool(value: object) -> PoolConfig:
    if not isinstance(value, dict):
        raise ConfigError("[pool] must be a table")
    for key, check in SCHEMA["pool"].items():
        if key in value:
            check(value[key], f"[pool] {key}")
    if "members" not in value:
        raise ConfigError("[pool] members: missing (the cards of the pool)")
    return PoolConfig(members=_pool_members(value["members"], "[pool] members"),
                      label=str(value.get("label", "sc4dnssec pool")), serial=str(value.get("serial", "sc4pool")),
                      timeout_s=_timeout_ms(value.get("timeout_ms", 5000), "[pool] timeout_ms"),
                      separate_modules=bool(value.get("separate_modules", True)))


def _token_text(limit: int) -> Callable[[object, str], None]:
    def check(value: object, setting: str) -> None:
        _is_str(value, setting)
        assert isinstance(value, str)
        if len(value.encode()) > limit:
            raise ConfigError(f"{setting}: at most {limit} bytes (a CK_TOKEN_INFO field)")
    return check


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`check`: where, which setting, what is wrong."""

    path: str
    line: int | None
    setting: str
    message: str
    error: bool = True

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {'error' if self.error else 'warning'}: {self.setting}: {self.message}"


def _is_bool(value: object, setting: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{setting}: expected true or false, not {value!r}")


def _is_str(value: object, setting: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{setting}: expected a non-empty string, not {value!r}")


def _mechanisms(value: object, setting: str) -> None:
    if not isinstance(value, list):
        raise ConfigError(f"{setting}: expected a list of CKM_* names or numbers")
    for m in value:
        _mechanism(m)


#: Every setting the file may hold: table ("" for top level) -> key -> validator.  A key that is
#: not here is reported by ``config check``: ``load`` ignores it, so a typo would silently do nothing.
SCHEMA: Mapping[str, Mapping[str, Callable[[object, str], object]]] = {
    "": {"backend": _is_str},
    "audit": {
        "path": _is_str,
        "fsync": lambda v, s: _choice(v, s, ("none", "always")),
        "on_failure": lambda v, s: _choice(v, s, ("fail-closed", "fail-open")),
        "syslog": _is_bool,
        "syslog_socket": _is_str,
    },
    "mask": {"functions": _functions, "mechanisms": _mechanisms},
    "compat": {"advertise_keygen": _is_bool, "eddsa_keygen_alias": _is_bool},
    "policy": {"allow_functions": _functions, "ceremony_window": _is_str},
    "pool": {"members": _pool_members, "label": _token_text(32), "serial": _token_text(16),
             "timeout_ms": _timeout_ms, "separate_modules": _is_bool},
}

_TABLE_LINE = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]")
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_TOML_POS = re.compile(r"at line (\d+)")


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """(table, key) -> line number, for the flat layout the configuration uses."""
    lines: dict[tuple[str, str], int] = {}
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        if m := _TABLE_LINE.match(line):
            table = m.group(1)
            lines.setdefault((table, ""), n)
        elif m := _KEY_LINE.match(line):
            lines.setdefault((table, m.group(1)), n)
    return lines


def check(path: str) -> list[Problem]:
    """Every problem of the configuration file at ``path``, each with its setting and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return [Problem(path, None, "file", f"cannot read it: {e.strerror}")]
    text = raw.decode("utf-8", "replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_POS.search(str(e))
        return [Problem(path, int(m.group(1)) if m else None, "syntax", str(e))]
    lines = _key_lines(text)
    problems: list[Problem] = []
    for key, value in data.items():
        if isinstance(value, dict):
            table, entries = key, value
            if table not in SCHEMA or not table:
                problems.append(Problem(path, lines.get((table, "")), f"[{table}]", "unknown table"))
                continue
        else:
            table, entries = "", {key: value}
        for k, v in entries.items():
            setting = f"[{table}] {k}" if table else k
            line = lines.get((table, k))
            validate = SCHEMA[table].get(k)
            if not table and k in SCHEMA:
                problems.append(Problem(path, line, k, f"[{k}] must be a table"))
                continue
            if validate is None:
                problems.append(Problem(path, line, setting, "unknown setting (ignored by the shim)"))
                continue
            try:
                validate(v, setting)
            except ConfigError as e:
                problems.append(Problem(path, line, setting, str(e).removeprefix(f"{setting}: ")))
    pool = data.get("pool")
    if isinstance(pool, dict) and "members" not in pool:
        problems.append(Problem(path, lines.get(("pool", "")), "[pool] members", "missing (the cards of the pool)"))
    backend = data.get("backend")
    if isinstance(backend, str) and backend and not os.path.isfile(backend):
        problems.append(Problem(path, lines.get(("", "backend")), "backend", f"{backend} does not exist here",
                                error=False))
    return problems


def dumps(conf: Mapping[str, object]) -> str:
    """The TOML text of a configuration dict ``load`` accepts (top-level keys, then one level of
    tables): for tools and tests that write SC4DNSSEC_CONF files.  JSON's string, number, boolean
    and array syntax is valid TOML for the values the configuration uses."""
    lines = [f"{k} = {_toml(v)}" for k, v in conf.items() if not isinstance(v, Mapping)]
    for k, v in conf.items():
        if isinstance(v, Mapping):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {_toml(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    """JSON's spelling where it is TOML's; a table inside a list as a TOML inline table."""
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)
