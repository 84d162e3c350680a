"""The three ways to reach a backend: directly, through pkcs11-spy, through the shim."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shim.locate import module_path

SPY_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/pkcs11-spy.so", "/usr/lib/aarch64-linux-gnu/pkcs11-spy.so",
                  "/usr/lib64/pkcs11-spy.so", "/usr/lib/pkcs11-spy.so")


def spy_module() -> str:
    for p in SPY_CANDIDATES:
        if os.path.exists(p):
            return p
    raise FileNotFoundError("pkcs11-spy.so not found (Debian: opensc-pkcs11)")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any shim/spy settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SC4DNSSEC_", "PKCS11SPY"))}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Way:
    name: str  # "direct" | "spy" | "shim"
    module: str
    env: dict[str, str]


def ways(backend: str, base_env: dict[str, str], logs: Path, tag: str) -> dict[str, Way]:
    """Direct, pkcs11-spy (text log to a file) and the shim (audit log on, fsync none: the default)."""
    return {
        "direct": Way("direct", backend, clean_env(base_env)),
        "spy": Way("spy", spy_module(), clean_env({**base_env, "PKCS11SPY": backend,
                                                   "PKCS11SPY_OUTPUT": str(logs / f"spy-{tag}.log")})),
        "shim": Way("shim", module_path(), clean_env({**base_env, "SC4DNSSEC_BACKEND": backend,
                                                      "SC4DNSSEC_AUDIT_LOG": str(logs / f"audit-{tag}.jsonl")})),
    }
