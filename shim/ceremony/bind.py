"""The BIND 9.20 side of the offline-KSK ceremony: dnssec-ksr over a KSK on the card.

The ceremony (offline, card in the reader) runs, in this order:

1. :func:`ksk_from_card`: ``dnssec-keyfromlabel`` makes BIND key files that point at the KSK on
   the card (a ``Label:`` line, no private key material).
2. :func:`pregenerate_zsks`: ``dnssec-ksr keygen`` makes the ZSKs for the period, then
   ``dnssec-ksr request`` writes the key signing request (KSR).
3. :func:`sign_ksr`: ``dnssec-ksr sign`` signs the DNSKEY/CDNSKEY/CDS RRsets of every bundle with the
   KSK on the card, through pkcs11-provider and the shim: the signed key response (SKR).
4. :func:`export_ds`: ``dnssec-dsfromkey`` writes the DS records for the parent.

The online signer (:func:`online_key_directory`, :func:`online_named_conf`, :func:`import_skr`)
gets the ZSK files, the KSK's public ``.key`` file and the SKR; it never loads the provider, the
shim or the card.

ZSK randomness (:func:`seed_kernel_from_card`): before ``dnssec-ksr keygen``, ``pkcs11-tool
--generate-random`` draws bytes through the shim (the card's RNG XOR the host's, shim/soft/random.py;
the audit log records the call with ``card_rng``) straight into ``/dev/random``, and the kernel's
generator is reseeded (``RNDRESEEDCRNG``) so that what it hands out next depends on those bytes.
dnssec-ksr's OpenSSL seeds from the kernel, so the ZSKs are made by a generator whose seed includes
the card's contribution. This does not make the ZSKs a function of the card's bytes alone, and no
one can check afterwards that it happened except through the audit record and the reseed result.
pkcs11-provider's PKCS11-RAND (an OpenSSL ``[random]`` section) would draw every byte from the
card, but BIND aborts at start with it: docs/ceremony-bind.md says why.

Every tool runs through a :class:`Runner`: :class:`HostRunner` (the real tools on the host's
PATH, as in production on a Debian 13 host) or any callable with the same shape (the tests run the
tools in the Debian 13 root on a Debian 12 host). Environments are explicit: ``signing`` for the
processes that reach the card, ``plain`` (no OPENSSL_CONF) for everything else.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

POLICY = "sc4dnssec-offline-ksk"

# BIND's mnemonic for each DNSSEC algorithm number the ceremony supports.
ALGORITHMS: dict[int, str] = {8: "rsasha256", 13: "ecdsap256sha256", 14: "ecdsap384sha384"}


class CeremonyToolError(RuntimeError):
    """A BIND tool failed, or produced something the ceremony must not accept."""


class Completed(Protocol):
    @property
    def returncode(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> Completed: ...


class HostRunner:
    """The tools on this host's PATH; the caller's environment minus OPENSSL_CONF, plus ``env``."""

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> Completed:
        base = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
        return subprocess.run(
            list(argv), env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=3600, check=False
        )


@dataclass(frozen=True)
class ToolEnv:
    """How to run BIND's tools: the runner, and the environment of the processes that use the card
    (OPENSSL_CONF naming the provider over the shim, SC4DNSSEC_* for the shim) and of those that
    must not (dig, rndc and dnssec-verify abort or need nothing with the provider loaded)."""

    signing: Mapping[str, str]
    plain: Mapping[str, str] = field(default_factory=dict)
    runner: Runner = field(default_factory=HostRunner)
    module: str | None = None  # the shim's PKCS#11 module, for pkcs11-tool (seed_kernel_from_card)

    @property
    def card(self) -> dict[str, str]:
        """The signing environment without OPENSSL_CONF: for tools that load the module themselves."""
        return {k: v for k, v in self.signing.items() if k != "OPENSSL_CONF"}

    def run(
        self, argv: Sequence[str | os.PathLike[str]], cwd: Path, signing: bool = False, card: bool = False
    ) -> Completed:
        args = [os.fspath(a) for a in argv]
        res = self.runner(args, self.card if card else self.signing if signing else self.plain, cwd)
        if res.returncode != 0:
            raise CeremonyToolError(
                f"{' '.join(args)} exited {res.returncode}\n--- stdout ---\n{res.stdout[-3000:]}"
                f"\n--- stderr ---\n{res.stderr[-3000:]}"
            )
        return res


@dataclass(frozen=True)
class Schedule:
    """The period the ceremony signs for, and the signature timing of DPS 6.6: DNSKEY RRsets
    re-signed every ``resign`` (10 days) with ``validity`` (15 days), ZSKs rolled every
    ``zsk_lifetime`` (90 days).

    BIND's ``signatures-refresh`` is how long before expiry a signature is replaced, so a new
    bundle every ``resign`` is ``signatures-refresh = validity - resign``."""

    start: datetime
    end: datetime
    resign: timedelta = timedelta(days=10)
    validity: timedelta = timedelta(days=15)
    zsk_lifetime: timedelta = timedelta(days=90)
    dnskey_ttl: int = 3600
    algorithm: int = 13

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("schedule times must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise ValueError("schedule end must be after its start")
        if not timedelta(0) < self.resign < self.validity:
            raise ValueError("the re-sign interval must be positive and shorter than the signature validity")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm} is not one of {sorted(ALGORITHMS)}")

    @classmethod
    def days(cls, days: int, start: datetime | None = None, **kw: object) -> Schedule:
        begin = (start or datetime.now(UTC)).replace(microsecond=0)
        return cls(begin, begin + timedelta(days=days), **kw)  # type: ignore[arg-type]

    @property
    def refresh(self) -> timedelta:
        return self.validity - self.resign

    def bind_times(self) -> list[str]:
        """``-i START -e END`` for dnssec-ksr."""
        return ["-i", _bind_time(self.start), "-e", _bind_time(self.end)]


def _bind_time(t: datetime) -> str:
    """BIND's absolute time: UTC, YYYYMMDDHHMMSS."""
    return t.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def _duration(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds % 86400 == 0:
        return f"P{seconds // 86400}D"
    return f"PT{seconds}S"


def policy_conf(schedule: Schedule) -> str:
    """The ``dnssec-policy`` both sides use: dnssec-ksr reads it offline (``-l``), named online."""
    alg = ALGORITHMS[schedule.algorithm]
    return f"""dnssec-policy "{POLICY}" {{
    offline-ksk yes;
    keys {{
        ksk key-directory lifetime unlimited algorithm {alg};
        zsk key-directory lifetime {_duration(schedule.zsk_lifetime)} algorithm {alg};
    }};
    dnskey-ttl {schedule.dnskey_ttl};
    signatures-validity {_duration(schedule.validity)};
    signatures-validity-dnskey {_duration(schedule.validity)};
    signatures-refresh {_duration(schedule.refresh)};
}};
"""


@dataclass(frozen=True)
class KskRef:
    """The KSK on the card: its PKCS#11 URI (with pin-source, never pin-value) and the key files
    dnssec-keyfromlabel made for it (``<base>.key`` public, ``<base>.private`` a pointer to the card)."""

    uri: str
    base: Path

    @property
    def key_file(self) -> Path:
        return self.base.with_name(self.base.name + ".key")

    @property
    def private_file(self) -> Path:
        return self.base.with_name(self.base.name + ".private")

    @property
    def tag(self) -> int:
        return int(_key_base(self.base.name).group("tag"))

    @property
    def algorithm(self) -> int:
        return int(_key_base(self.base.name).group("alg"))

    @property
    def label(self) -> str | None:
        return self._uri_attr("object")

    @property
    def token(self) -> str | None:
        return self._uri_attr("token")

    def _uri_attr(self, name: str) -> str | None:
        m = re.search(rf"(?:^|;){name}=([^;?]+)", self.uri.removeprefix("pkcs11:"))
        return unquote(m.group(1)) if m else None


_KEY_BASE = re.compile(r"^K(?P<zone>.+)\.\+(?P<alg>\d{3})\+(?P<tag>\d{5})$")


def _key_base(name: str) -> re.Match[str]:
    m = _KEY_BASE.match(name)
    if m is None:
        raise CeremonyToolError(f"not a BIND key file name: {name!r}")
    return m


def _dirs(workdir: Path) -> tuple[Path, Path]:
    ksk, zsk = workdir / "ksk", workdir / "zsk"
    ksk.mkdir(parents=True, exist_ok=True)
    zsk.mkdir(parents=True, exist_ok=True)
    return ksk, zsk


def _write_policy(workdir: Path, schedule: Schedule) -> Path:
    path = workdir / "dnssec-policy.conf"
    path.write_text(policy_conf(schedule))
    return path


def ksk_from_card(
    zone: str, workdir: Path, uri: str, env: ToolEnv, algorithm: int = 13, since: datetime | None = None
) -> KskRef:
    """``dnssec-keyfromlabel -f KSK`` for the key URI names on the card, into ``workdir/ksk``.

    ``since`` (give the schedule's start) is when the KSK is published and active: without it the
    key file says "from now", and a schedule that starts earlier gets a first SKR bundle without
    the KSK (which :func:`sign_ksr` refuses).

    The URI must carry the PIN as ``pin-source=``: a ``pin-value=`` PIN would be copied in clear
    into the ``.private`` file."""
    if "pin-value=" in uri:
        raise ValueError("the KSK URI carries pin-value=; use pin-source=FILE (BIND copies the URI into .private)")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm} is not one of {sorted(ALGORITHMS)}")
    kdir, _ = _dirs(workdir)
    timing = [] if since is None else ["-P", _bind_time(since), "-A", _bind_time(since)]
    res = env.run(
        ["dnssec-keyfromlabel", "-K", kdir, "-l", uri, "-a", ALGORITHMS[algorithm].upper(), "-f", "KSK",
         *timing, zone],
        workdir,
        signing=True,
    )
    lines = res.stdout.strip().splitlines()
    if not lines:
        raise CeremonyToolError(f"dnssec-keyfromlabel printed no key name:\n{res.stderr}")
    ref = KskRef(uri, kdir / _key_base(lines[-1].strip()).group(0))
    private = ref.private_file.read_text()
    if "Label:" not in private or "PrivateKey:" in private:
        raise CeremonyToolError(f"{ref.private_file} does not point at a key on the card")
    return ref


# <linux/random.h>: _IO('R', 0x07); needs CAP_SYS_ADMIN
RNDRESEEDCRNG = 0x5207
CARD_RNG_BYTES = 256


@dataclass(frozen=True)
class KernelSeed:
    """What :func:`seed_kernel_from_card` did: bytes drawn through the shim into /dev/random, and
    whether the kernel reseeded from them at once (else at its next scheduled reseed)."""

    nbytes: int
    reseeded: bool
    reason: str = ""


def seed_kernel_from_card(workdir: Path, ksk: KskRef, env: ToolEnv, nbytes: int = CARD_RNG_BYTES) -> KernelSeed:
    """Mix ``nbytes`` from the card's RNG (through the shim) into the kernel's pool, then reseed
    the kernel's generator, so that the ZSKs dnssec-ksr makes next are seeded with them.

    The bytes go from pkcs11-tool straight to /dev/random and are never written to a file."""
    if env.module is None:
        raise ValueError("ToolEnv.module (the shim's PKCS#11 module) is needed to draw from the card")
    token = ksk.token
    select = ["--token-label", token] if token else []
    env.run(
        ["pkcs11-tool", "--module", env.module, *select, "--generate-random", str(nbytes),
         "--output-file", "/dev/random"],
        workdir,
        card=True,
    )
    try:
        fd = os.open("/dev/random", os.O_WRONLY)
        try:
            fcntl.ioctl(fd, RNDRESEEDCRNG)
        finally:
            os.close(fd)
    except OSError as e:
        return KernelSeed(nbytes, False, f"RNDRESEEDCRNG: {e.strerror}; the kernel reseeds on its own schedule")
    return KernelSeed(nbytes, True)


def ksr_path(zone: str, workdir: Path) -> Path:
    return workdir / f"{zone}.ksr"


def pregenerate_zsks(zone: str, workdir: Path, ksk: KskRef, schedule: Schedule, env: ToolEnv) -> list[Path]:
    """``dnssec-ksr keygen`` then ``request`` for the schedule's period.

    Needs no card: runs with ``env.plain``, so the provider and the card are not loaded. Returns
    the ZSK files (``.key``, ``.private``, ``.state`` of each key, in ``workdir/zsk``) and, last,
    the KSR. ``ksk`` is checked against the schedule's algorithm (the KSR must match the KSK)."""
    if ksk.algorithm != schedule.algorithm:
        raise ValueError(f"the KSK is algorithm {ksk.algorithm}, the schedule says {schedule.algorithm}")
    _, zdir = _dirs(workdir)
    policy = _write_policy(workdir, schedule)
    common: list[str | os.PathLike[str]] = [
        "dnssec-ksr", "-l", policy, "-k", POLICY, *schedule.bind_times(), "-K", zdir,
    ]
    env.run([*common, "keygen", zone], workdir)
    res = env.run([*common, "request", zone], workdir)
    if ";; KeySigningRequest" not in res.stdout:
        raise CeremonyToolError(f"dnssec-ksr request wrote no KSR:\n{res.stdout[:2000]}\n{res.stderr}")
    ksr = ksr_path(zone, workdir)
    ksr.write_text(res.stdout)
    zsks = sorted(p for p in zdir.iterdir() if p.name.startswith(f"K{zone}.+"))
    if not any(p.suffix == ".private" for p in zsks):
        raise CeremonyToolError(f"dnssec-ksr keygen made no ZSK in {zdir}")
    return [*zsks, ksr]


def sign_ksr(zone: str, workdir: Path, ksk: KskRef, ksr: Path, schedule: Schedule, env: ToolEnv) -> Path:
    """``dnssec-ksr sign`` with the KSK on the card: the SKR, one bundle per re-sign interval."""
    policy = _write_policy(workdir, schedule)
    res = env.run(
        [
            "dnssec-ksr", "-l", policy, "-k", POLICY, *schedule.bind_times(),
            "-K", ksk.base.parent, "-f", ksr, "sign", zone,
        ],
        workdir,
        signing=True,
    )
    bundles = _split_bundles(res.stdout)
    if not bundles:
        raise CeremonyToolError(f"dnssec-ksr sign wrote no SKR:\n{res.stdout[:2000]}\n{res.stderr}")
    unsigned = [when for when, body in bundles if ksk.tag not in _rrsig_tags(body, "DNSKEY")]
    if unsigned:
        raise CeremonyToolError(
            f"SKR bundles {unsigned} carry no DNSKEY signature by KSK {ksk.tag}: is the KSK published "
            "and active from the schedule's start (ksk_from_card since=)?"
        )
    skr = workdir / f"{zone}.skr"
    skr.write_text(res.stdout)
    return skr


_BUNDLE = re.compile(r"^;; SignedKeyResponse 1\.0 (\d{14})", re.MULTILINE)


def _split_bundles(text: str) -> list[tuple[str, str]]:
    """(time, records) for each bundle of an SKR."""
    marks = list(_BUNDLE.finditer(text))
    return [(m.group(1), text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)])
            for i, m in enumerate(marks)]


def _rrsig_tags(text: str, covered: str) -> set[int]:
    tags = set()
    for line in text.splitlines():
        f = line.split()
        if len(f) > 10 and f[3] == "RRSIG" and f[4] == covered:
            tags.add(int(f[10]))
    return tags


def skr_bundles(skr: Path) -> list[str]:
    """The bundle times (YYYYMMDDHHMMSS) an SKR holds."""
    return [when for when, _ in _split_bundles(skr.read_text())]


def export_ds(zone: str, workdir: Path, ksk: KskRef, env: ToolEnv) -> Path:
    """``dnssec-dsfromkey -a SHA-256`` over the KSK's public key file: the DS for the parent."""
    res = env.run(["dnssec-dsfromkey", "-a", "SHA-256", ksk.key_file], workdir)
    if " DS " not in res.stdout:
        raise CeremonyToolError(f"dnssec-dsfromkey wrote no DS record:\n{res.stdout}\n{res.stderr}")
    ds = workdir / f"{zone}.ds"
    ds.write_text(res.stdout)
    return ds


# -- the online signer ------------------------------------------------------------------------


def online_key_directory(zone: str, workdir: Path, ksk: KskRef, dest: Path) -> list[Path]:
    """What the online named's key-directory gets: every ZSK file and the KSK's ``.key`` only (its
    ``.private`` names the card, which the online signer must never open)."""
    dest.mkdir(parents=True, exist_ok=True)
    _, zdir = _dirs(workdir)
    out = []
    for src in [*sorted(zdir.iterdir()), ksk.key_file]:
        if src.name.startswith(f"K{zone}.+"):
            out.append(Path(shutil.copy2(src, dest / src.name)))
    return out


def online_named_conf(zone: str, zone_file: Path, key_dir: Path, schedule: Schedule) -> str:
    """The named.conf part for the online signer: the same dnssec-policy (offline-ksk yes) and the
    zone signed inline with the pre-generated ZSKs. No key-store, no pkcs11-uri: no card."""
    return (
        policy_conf(schedule)
        + f"""zone "{zone}" {{
    type primary;
    file "{zone_file}";
    dnssec-policy "{POLICY}";
    inline-signing yes;
    key-directory "{key_dir}";
}};
"""
    )


def import_skr(zone: str, skr: Path, rndc: Sequence[str], env: ToolEnv, cwd: Path) -> Completed:
    """``rndc skr -import SKR ZONE``; ``rndc`` is the rndc command with its server/port/key options.
    Runs with ``env.plain``: rndc aborts with an early-loading provider."""
    return env.run([*rndc, "skr", "-import", skr, zone], cwd)
