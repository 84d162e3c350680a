"""PowerDNS (4.7 on Debian 12, 4.9 on Debian 13) through the shim, registered as a p11-kit module
(docs/powerdns.md).

PowerDNS finds PKCS#11 modules only through p11-kit, by module name. The shim gets a module file
beside the system's own (p11-kit reads no per-user files for root), limited with ``enable-in`` to
the PowerDNS programs. ``pdnsutil`` and ``pdns_server`` both open the token, so both get the
shim's environment; they run as the ``pdns`` user where the token can go with it.

PowerDNS looks for the token over every slot, empty ones included, and gives up at the first slot
without a token (``CKR_TOKEN_NOT_PRESENT``). OpenSC has a slot per reader, so on a virtual card
through OpenSC PowerDNS gets an OPENSC_CONF that shows it the card's reader only, as an operator
must do on a host with more than one reader.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sc4testkit.tokens import TOKENS
from sc4testkit.zones import free_port

from .conftest import (
    ORIGIN,
    Bench,
    Served,
    answer,
    dig,
    require,
    rrsig_tags,
    stop,
    verify_ldns,
    wait_for,
    write_zone,
)

pytestmark = pytest.mark.signers

P11_MODULES = Path("/usr/share/p11-kit/modules")
ALGORITHMS = {"ec": "ecdsa256", "rsa": "rsasha256"}


@pytest.fixture
def p11_name() -> Iterator[str]:
    """The shim as a system-wide p11-kit module, for PowerDNS's programs only; removed afterwards."""
    from shim.locate import module_path

    if not P11_MODULES.is_dir():
        pytest.fail(f"{P11_MODULES} missing: apt-get install p11-kit", pytrace=False)
    name = f"sc4dnssec-test-{uuid.uuid4().hex[:8]}"
    path = P11_MODULES / f"{name}.module"
    path.write_text(f"module: {module_path()}\nenable-in: pdnsutil, pdns_server\n")
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def card_reader_only(bench: Bench, request: pytest.FixtureRequest) -> None:
    """On a virtual card through OpenSC, OpenSC shows the PowerDNS programs the card's reader only.

    pcscd 2.x (Debian 13) lists the harness's other, empty readers before the card's; pcscd 1.9.9
    (Debian 12) lists the card's first, which is the only reason PowerDNS found it there unaided.
    """
    kind = TOKENS[bench.card.kind]
    if kind.source != "virtual":
        return
    harness = request.getfixturevalue("virtual_harness")
    if kind.module != "opensc":
        # libykcs11 has no reader filter: PowerDNS sees every reader the harness has
        listed = list(harness.reader_status())
        if listed and listed[0] != bench.card.reader:
            pytest.skip(f"PowerDNS stops at the first slot without a token, and {kind.module} shows all "
                        f"readers: pcscd lists {listed[0]!r} before the card's {bench.card.reader!r} "
                        "(docs/powerdns.md, 'One reader')")
        return
    reader = next(r for r in range(harness.readers) if harness.reader_name(r) == bench.card.reader)
    bench.env["OPENSC_CONF"] = str(harness.opensc_conf_for(reader))


def unconfigured_shim_env(bench: Bench, what: str) -> dict[str, str]:
    """The bench's environment without the shim's settings, for a PowerDNS program not meant to use it.

    p11-kit still loads the shim's module file (``p11_name``) into the program; without a backend it
    fails its C_Initialize and p11-kit goes on. Its records go to a file of this test, never to the
    host's /var/log/sc4dnssec, which a later package install would find owned by root."""
    env = {k: v for k, v in bench.env.items() if not k.startswith("SC4DNSSEC_")}
    env["SC4DNSSEC_AUDIT_LOG"] = str(bench.work / f"{what}-unconfigured-shim-audit.jsonl")
    return env


def pdns_version(bench: Bench) -> tuple[int, int]:
    out = subprocess.run(["pdns_server", "--version"], capture_output=True, text=True, timeout=30,
                         env=unconfigured_shim_env(bench, "version"))
    m = re.search(r"PowerDNS Authoritative Server (\d+)\.(\d+)", out.stdout + out.stderr)
    if m is None:
        pytest.fail(f"cannot read pdns_server --version: {out.stdout}{out.stderr}", pytrace=False)
    return int(m.group(1)), int(m.group(2))


def system_module_name(backend: str) -> str:
    """The name the system's own p11-kit file gives the backend library (e.g. softhsm2)."""
    real = os.path.realpath(backend)
    for f in sorted(P11_MODULES.glob("*.module")):
        for line in f.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "module" and os.path.realpath(value.strip()) == real:
                return f.stem
    pytest.fail(f"no p11-kit module file in {P11_MODULES} loads {backend}", pytrace=False)


def pdns_setup(bench: Bench, port: int) -> Path:
    """A bind-backend zone with its DNSSEC database, in a config dir of its own."""
    confdir = bench.mkdir("pdns", owned=True)
    zones = bench.mkdir("zones", owned=True)
    write_zone(zones / f"{ORIGIN}.zone")
    (confdir / "named.conf").write_text(f'zone "{ORIGIN}" {{ type master; file "{zones}/{ORIGIN}.zone"; }};\n')
    (confdir / "pdns.conf").write_text(
        f"""launch=bind
bind-config={confdir}/named.conf
bind-dnssec-db={confdir}/dnssec.db
local-address=127.0.0.1
local-port={port}
socket-dir={confdir}
guardian=no
daemon=no
disable-syslog=yes
write-pid=no
allow-axfr-ips=127.0.0.1
security-poll-suffix=
"""
    )
    as_user = bench.user is not None
    pdnsutil(bench, confdir, "create-bind-db", str(confdir / "dnssec.db"), as_user=as_user)
    if as_user:
        bench.chown(confdir, zones)
    return confdir


def pdnsutil(bench: Bench, confdir: Path, *args: str, check: bool = True, as_user: bool = False, env=None):
    return bench.run(["pdnsutil", f"--config-dir={confdir}", *args], check=check, as_user=as_user, env=env)


def assign(bench: Bench, confdir: Path, module: str, key: str, env=None, check: bool = True):
    """`pdnsutil hsm assign`: the key by its private key label; through the shim no separate
    public-key label is needed (the shim presents the public key under the same label)."""
    k = bench.card.keys[key]
    return pdnsutil(
        bench, confdir, "hsm", "assign", ORIGIN, ALGORITHMS[key], "ksk", module, bench.card.token_label,
        bench.card.pin, k.label, as_user=bench.user is not None, env=env, check=check,
    )


@pytest.mark.parametrize("key", list(ALGORITHMS))
@pytest.mark.usefixtures("card_reader_only")
def test_pdns_hsm_assign_serve(bench: Bench, p11_name: str, key: str) -> None:
    """hsm assign, rectify-zone, check-zone; pdns_server (as pdns) answers dig +dnssec and AXFR
    with the token key's signatures; the transferred zone passes ldns-verify-zone."""
    require("pdnsutil", "pdns_server", "dig", "ldns-verify-zone")
    user = bench.become("pdns")
    as_user = user is not None
    port = free_port()
    confdir = pdns_setup(bench, port)
    res = assign(bench, confdir, p11_name, key)
    assert "assigned" in res.stdout + res.stderr, res.explain()
    pdnsutil(bench, confdir, "rectify-zone", ORIGIN, as_user=as_user)
    check = pdnsutil(bench, confdir, "check-zone", ORIGIN, as_user=as_user)
    assert "0 errors" in check.stdout, check.explain()
    log = bench.work / "pdns.log"
    server = bench.popen(["pdns_server", f"--config-dir={confdir}"], log, as_user=as_user)
    served = Served(port, ("pdns_server", server, log))
    _, tag = served.signed_dnskey()
    a = served.answer(f"host1.{ORIGIN}", "A")
    assert rrsig_tags(a, "A") == {tag}, a
    axfr = bench.work / "axfr.zone"
    axfr.write_text(dig(port, ORIGIN, "AXFR", wait=240))
    verify_ldns(bench, axfr)
    rc = stop(server)
    assert rc is not None, f"pdns_server did not stop on SIGTERM:\n{log.read_text()[-4000:]}"
    signs = bench.check_audit(2, progs=["pdnsutil", "pdns_server"])
    assert signs["pdns_server"] >= 2, signs
    if bench.card.kind == "softhsm-cardlike":
        assert_completed_by_shim(bench, key)
    if user is not None:
        assert bench.daemon_uids("pdns_server") == {user.uid}


def assert_completed_by_shim(bench: Bench, key: str) -> None:
    """What the card-like token lacks, done by the shim and recorded as such in pdns_server's calls.

    Every version: ECDSA hashes with a single-part C_Digest (SHA-256) and signs raw CKM_ECDSA on
    the token; RSA signs CKM_SHA256_RSA_PKCS, which the shim completes as hash-then-sign over the
    token's CKM_RSA_PKCS. Only 4.7 also hashes the public key on the token (multi-part SHA-1, the
    key of its signature cache); 4.9 makes no such call (measured: 4.7.3 on Debian 12, 4.9.18 on
    Debian 13), so there only ECDSA shows digests at all.
    """
    served = [r for r in bench.records() if r.get("prog") == "pdns_server" and r.get("kind") == "call"]

    def calls(*fns: str) -> list[dict]:
        return [r for r in served if r.get("fn") in fns]

    inits = calls("C_SignInit")
    signs = calls("C_Sign")
    assert inits and signs, "pdns_server made no signature"
    mechanisms = {r["args"].get("mechanism") for r in inits}
    assert mechanisms == {"CKM_SHA256_RSA_PKCS" if key == "rsa" else "CKM_ECDSA"}, mechanisms
    assert {r.get("src") for r in signs} == {"card"}, signs[:3]
    if key == "rsa":
        assert {r["args"].get("completion") for r in inits} == {"hash-then-sign via RSA_PKCS"}, inits[:3]
        assert {r["args"].get("hashed_by") for r in signs} == {"soft"}, signs[:3]
    else:
        assert {r.get("src") for r in calls("C_Digest")} == {"soft"}, calls("C_DigestInit", "C_Digest")[:4]
    key_hashes = calls("C_DigestFinal")
    if pdns_version(bench) < (4, 9):
        assert key_hashes and {r.get("src") for r in key_hashes} == {"soft"}, key_hashes[:3]
    else:
        assert not key_hashes, key_hashes[:3]


def test_pdns_rsa_needs_the_shim_on_a_cardlike_token(bench: Bench, p11_name: str) -> None:
    """PowerDNS signs RSA with CKM_SHA256_RSA_PKCS (4.7 also hashes the key with C_Digest*); a
    card-like token has neither. The flow of test_pdns_hsm_assign_serve[rsa] straight on the backend (through the
    system's own p11-kit module file for it) cannot sign; through the shim (software digest,
    hash-then-sign on the token's raw RSA), on the same --card, it can."""
    if bench.card.kind != "softhsm-cardlike":
        pytest.skip(f"the direct baseline is the card-like token's; --card={bench.card.kind} has its own digests")
    require("pdnsutil", "pdns_server", "dig")
    port = free_port()
    confdir = pdns_setup(bench, port)
    direct = system_module_name(bench.card.module)
    direct_env = unconfigured_shim_env(bench, "direct")
    assign(bench, confdir, direct, "rsa", env=direct_env)
    log = bench.work / "pdns-direct.log"
    server = bench.popen(["pdns_server", f"--config-dir={confdir}"], log, env=direct_env)
    try:
        def answered() -> str | None:
            out = dig(port, ORIGIN, "DNSKEY")
            return out if "status:" in out else None

        out = wait_for(answered, "any answer from pdns_server (direct)")
        assert not rrsig_tags(answer(out), "DNSKEY"), f"direct on the card-like token signed after all:\n{out}"
    finally:
        stop(server)
    logtext = log.read_text()
    assert "C_SignInit failed: The crypto mechanism is invalid" in logtext, logtext[-4000:]
