"""(2) BIND end to end: dnssec-signzone (BIND 9.20 + pkcs11-provider, the Debian 13 root) over
SoftHSM directly (LD_PRELOAD, see consumers-bind920.md) and through the shim installed in the root.

Driven like tests/bind does (ci/lib/trixie.sh via sc4testkit.trixie): the shim is built in a venv
inside the root, the token and zones live in a work directory bind-mounted at the same path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import interleaved, median
from sc4testkit.tokens import SOFTHSM_CARDLIKE
from sc4testkit.trixie import Trixie, install_shim

PIN, SO_PIN, TOKEN, LABEL, ORIGIN = "1234", "5678", "sc4bench", "ecc256key", "bench.test"


def write_zone(path: Path, names: int) -> None:
    """``names`` hosts, each with A, AAAA and TXT: with NSEC that is 4 RRSIGs per name."""
    lines = ["$TTL 3600", f"$ORIGIN {ORIGIN}.", "@ IN SOA ns1 hostmaster 2024010101 3600 900 604800 300",
             "@ IN NS ns1", "ns1 IN A 127.0.0.1"]
    for i in range(1, names + 1):
        lines += [f"h{i} IN A 192.0.{i // 250 % 256}.{i % 250 + 1}", f"h{i} IN AAAA 2001:db8::{i:x}",
                  f'h{i} IN TXT "host {i}"']
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Setup:
    trixie: Trixie
    work: Path
    ksk: str
    env: dict[str, dict[str, str]]  # "direct" | "shim" -> signing environment
    cli: str  # sc4dnssec in the root's venv
    versions: dict[str, str] = field(default_factory=dict)


def setup(work: Path) -> Setup:
    work.mkdir(parents=True, exist_ok=True)
    t = Trixie.ensure(binds=[str(work)])
    installed = install_shim(t, work)
    cli, module = installed.cli, installed.module
    softhsm = t.find_lib("libsofthsm2.so")
    tokens = work / "tokens"
    tokens.mkdir()
    conf = work / "softhsm2.conf"
    # A card's mechanism set (the softhsm-cardlike token kind, without the shim's mask: the shim
    # forwards every call): pkcs11-provider then signs with raw CKM_ECDSA, C_SignInit + C_Sign +
    # C_GetSessionInfo x2 per signature, as it does on a real card.  With all of SoftHSM's
    # mechanisms it would use CKM_ECDSA_SHA256 with C_SignUpdate x5 + C_GetOperationState.
    conf.write_text(SOFTHSM_CARDLIKE.softhsm_conf(str(tokens)))
    hsm = {"SOFTHSM2_CONF": str(conf)}
    t.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN], env=hsm)
    t.run(["pkcs11-tool", "--module", softhsm, "--token-label", TOKEN, "--login", "--pin", PIN, "--keypairgen",
           "--key-type", "EC:prime256v1", "--label", LABEL, "--id", "01"], env=hsm)
    (work / "pin").write_text(PIN)
    env = {}
    for way, mod in (("direct", softhsm), ("shim", module)):
        cnf = work / f"openssl-{way}.cnf"
        cnf.write_text(t.openssl_cnf(mod))
        env[way] = {**hsm, "OPENSSL_CONF": str(cnf)}
    env["direct"]["LD_PRELOAD"] = softhsm  # SoftHSM under the provider's RTLD_DEEPBIND crashes otherwise
    env["shim"]["SC4DNSSEC_BACKEND"] = softhsm
    uri = f"pkcs11:token={TOKEN};object={LABEL};pin-source={work / 'pin'}"
    res = t.run(["dnssec-keyfromlabel", "-l", uri, "-a", "ECDSAP256SHA256", "-f", "KSK", ORIGIN],
                env=env["direct"], cwd=str(work))
    ksk = res.stdout.strip().splitlines()[-1]
    versions = {}
    for pkg in ("bind9-utils", "pkcs11-provider", "softhsm2", "python3"):
        versions[pkg] = t.run(["dpkg-query", "-W", "-f", "${Version}", pkg], check=False).stdout.strip()
    return Setup(t, work, ksk, env, cli, versions)


def zone(s: Setup, names: int) -> Path:
    z = s.work / f"zone{names}.db"
    write_zone(z, names)
    with z.open("a") as f:
        f.write((s.work / f"{s.ksk}.key").read_text())
    return z


def signzone(s: Setup, way: str, z: Path, threads: int, audit: Path | None = None) -> float:
    env = dict(s.env[way])
    if audit is not None:
        env["SC4DNSSEC_AUDIT_LOG"] = str(audit)
    out = z.with_suffix(f".{way}{threads}.signed")
    t0 = time.monotonic()
    s.trixie.run(["dnssec-signzone", "-n", str(threads), "-x", "-z", "-o", ORIGIN, "-k", s.ksk, "-f", str(out),
                  z.name], env=env, cwd=str(s.work), timeout=1800)
    return time.monotonic() - t0


def count_rrsigs(z: Path) -> int:
    """RRSIG records in a signed zone file, not the RRSIG in an NSEC/NSEC3 type bitmap (an NSEC of
    a name with few types has it among its first fields)."""
    n = 0
    with z.open() as f:
        for line in f:
            head = line.split()[:5]
            if "RRSIG" in head and not line.startswith(";") and not {"NSEC", "NSEC3"} & set(head[:head.index("RRSIG")]):
                n += 1
    return n


@dataclass
class BindResult:
    names: int
    threads: int
    signatures: int
    seconds: dict[str, float]
    samples: dict[str, list[float]]

    @property
    def ratio(self) -> float:
        return self.seconds["shim"] / self.seconds["direct"]

    def us_per_sig(self, way: str) -> float:
        return self.seconds[way] / self.signatures * 1e6


def bind_runs(s: Setup, names: int, threads: int, reps: int) -> BindResult:
    z = zone(s, names)
    audit = s.work / f"audit-{names}-{threads}.jsonl"

    def sample(way: str) -> float:
        if audit.exists():
            audit.unlink()
        return signzone(s, way, z, threads, audit if way == "shim" else None)

    raw = interleaved(reps, ("direct", "shim"), sample)
    sigs = count_rrsigs(z.with_suffix(f".direct{threads}.signed"))
    return BindResult(names, threads, sigs, {w: median(v) for w, v in raw.items()}, raw)


def audit_check(s: Setup, names: int, threads: int) -> str:
    """The last shim run's audit log verifies; how many C_Sign records it holds."""
    audit = s.work / f"audit-{names}-{threads}.jsonl"
    res = s.trixie.run([s.cli, "audit", "verify", str(audit)], check=False)
    counts: dict[str, int] = {}
    for line in audit.open():
        i = line.find('"fn":"') if '"kind":"call"' in line else -1  # intents: bench/writeahead.py
        if i >= 0:
            fn = line[i + 6:line.index('"', i + 6)]
            counts[fn] = counts.get(fn, 0) + 1
    status = "verifies" if res.returncode == 0 else f"FAILS VERIFY: {res.stdout[-300:]}{res.stderr[-300:]}"
    top = ", ".join(f"{fn} {n}" for fn, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6])
    signed = count_rrsigs(s.work / f"zone{names}.shim{threads}.signed")
    per = sum(counts.values()) / signed if signed else 0.0
    return f"{status}; {sum(counts.values())} calls recorded, {per:.1f} per signature: {top}"
