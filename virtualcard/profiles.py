"""Realism profiles: what a real card allows and how slow it is.

A profile limits key slots, algorithms and PIN lengths the way a real card does, and adds a
per-operation latency so callers see card-like timings (real cards take ~50-500 ms per
signature; see ../shared/facts/opensc-piv-virtual-card.md).  ``latency_ms`` from the command
line or ``VIRTUALCARD_LATENCY_MS`` overrides the profile's signing latency for every algorithm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

# PIV algorithm identifiers (SP 800-78-4 table 6-2).
ALG_3DES = 0x03
ALG_RSA1024 = 0x06
ALG_RSA2048 = 0x07
ALG_RSA3072 = 0x05
ALG_AES128 = 0x08
ALG_AES192 = 0x0A
ALG_AES256 = 0x0C
ALG_ECCP256 = 0x11
ALG_ECCP384 = 0x14

RSA_BITS = {ALG_RSA1024: 1024, ALG_RSA2048: 2048, ALG_RSA3072: 3072}
EC_CURVES = {ALG_ECCP256: "secp256r1", ALG_ECCP384: "secp384r1"}
SYMMETRIC_KEY_LEN = {ALG_3DES: 24, ALG_AES128: 16, ALG_AES192: 24, ALG_AES256: 32}

STANDARD_SLOTS = (0x9A, 0x9C, 0x9D, 0x9E)
RETIRED_SLOTS = tuple(range(0x82, 0x96))


@dataclass(frozen=True)
class Profile:
    name: str
    family: str = "any"  # "piv", "sc-hsm" or "any": which card applications the profile describes
    slots: tuple[int, ...] = STANDARD_SLOTS + RETIRED_SLOTS
    algorithms: frozenset[int] = frozenset({ALG_RSA1024, ALG_RSA2048, ALG_RSA3072, ALG_ECCP256, ALG_ECCP384})
    pin_min: int = 6
    pin_max: int = 8
    pin_retries: int = 3
    puk_retries: int = 3
    # milliseconds per private-key operation, keyed by PIV algorithm id
    sign_latency_ms: dict[int, float] = field(default_factory=dict)
    keygen_latency_ms: dict[int, float] = field(default_factory=dict)

    def sign_delay(self, alg: int) -> float:
        return self.sign_latency_ms.get(alg, 0.0) / 1000.0

    def keygen_delay(self, alg: int) -> float:
        return self.keygen_latency_ms.get(alg, 0.0) / 1000.0

    def with_latency(self, ms: float) -> Profile:
        """Same limits, one signing latency for every algorithm."""
        return replace(self, sign_latency_ms={alg: ms for alg in self.algorithms})


PROFILES: dict[str, Profile] = {
    # No artificial delay: what CI wants.
    "fast": Profile(name="fast"),
    # YubiKey 5 (PIV applet): 24 retired slots, RSA up to 2048, ~EC 60 ms / RSA 2048 ~ 150 ms.
    "yubikey5": Profile(
        name="yubikey5",
        family="piv",
        algorithms=frozenset({ALG_RSA1024, ALG_RSA2048, ALG_ECCP256, ALG_ECCP384}),
        sign_latency_ms={ALG_ECCP256: 60, ALG_ECCP384: 90, ALG_RSA1024: 60, ALG_RSA2048: 150},
        keygen_latency_ms={ALG_ECCP256: 150, ALG_ECCP384: 250, ALG_RSA2048: 5000},
    ),
    # Nitrokey HSM 2 / SmartCard-HSM (sc-hsm card only).  Nitrokey FAQ, hash on the host:
    # ECDSA P-256 ~6/s, RSA-2048 ~100/min (1.7/s); EC key generation ~10/min.
    "nitrokey-hsm2": Profile(
        name="nitrokey-hsm2",
        family="sc-hsm",
        slots=(),
        algorithms=frozenset({ALG_RSA2048, ALG_ECCP256, ALG_ECCP384}),
        sign_latency_ms={ALG_ECCP256: 167, ALG_ECCP384: 250, ALG_RSA2048: 590},
        keygen_latency_ms={ALG_ECCP256: 6000, ALG_ECCP384: 8000, ALG_RSA2048: 20000},
    ),
    # A cheap PIV token: four slots only, EC P-256 and RSA-2048, slow.
    "cheap-piv": Profile(
        name="cheap-piv",
        family="piv",
        slots=STANDARD_SLOTS,
        algorithms=frozenset({ALG_RSA2048, ALG_ECCP256}),
        sign_latency_ms={ALG_ECCP256: 250, ALG_RSA2048: 500},
        keygen_latency_ms={ALG_ECCP256: 2000, ALG_RSA2048: 30000},
    ),
}


def get_profile(name: str = "fast", latency_ms: float | None = None, family: str | None = None) -> Profile:
    """Look a profile up; ``latency_ms`` (or env ``VIRTUALCARD_LATENCY_MS``) overrides signing latency.

    ``family`` ("piv" / "sc-hsm") refuses a profile written for the other card family.
    """
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
    if family is not None and profile.family not in ("any", family):
        raise ValueError(f"profile {name!r} describes a {profile.family} card, not {family}")
    if latency_ms is None and os.environ.get("VIRTUALCARD_LATENCY_MS"):
        latency_ms = float(os.environ["VIRTUALCARD_LATENCY_MS"])
    if latency_ms is not None:
        profile = profile.with_latency(latency_ms)
    return profile
