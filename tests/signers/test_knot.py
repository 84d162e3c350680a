"""Knot DNS 3.2 through the shim: keymgr, kzonesign, knotd + knotc zone-sign (docs/knot.md).

Every Knot process that opens the keystore loads the module: keymgr, kzonesign and knotd, so each
gets the shim's environment. The zone is judged by kzonecheck and ldns-verify-zone, which load no
PKCS#11 module, and by dig against knotd.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from sc4testkit.zones import free_port

from .conftest import (
    ORIGIN,
    Bench,
    Served,
    dig,
    dnskey_tags,
    require,
    rrsig_tags,
    verify_ldns,
    wait_for,
    write_zone,
    zone_records,
)

pytestmark = pytest.mark.signers

ALGORITHMS = {"ec": "ecdsap256sha256", "rsa": "rsasha256"}


def keystore_uri(bench: Bench) -> str:
    """Knot's keystore config: an RFC 7512 URI (labels percent-encoded) and the module path."""
    label = quote(bench.card.token_label, safe="")
    return f"pkcs11:token={label};pin-value={bench.card.pin} {bench.module}"


def knot_conf(
    bench: Bench, alg: str, *, port: int | None = None, manual: bool = True, single: bool = True
) -> Path:
    """knot.conf with the token as keystore; ``single-type-signing``: one key (a CSK) signs all,
    which is what a card with one key per algorithm can do."""
    rundir, db = bench.mkdir("run", owned=True), bench.mkdir("db", owned=True)
    zones = bench.mkdir("zones", owned=True)
    server = f"    rundir: {rundir}\n"
    if port is not None:
        server += f"    listen: 127.0.0.1@{port}\n"
    sizes = "    ksk-size: 2048\n    zsk-size: 2048\n" if alg.startswith("rsa") else ""
    conf = bench.work / "knot.conf"
    conf.write_text(
        f"""server:
{server}database:
    storage: {db}
log:
  - target: stderr
    any: info
keystore:
  - id: token
    backend: pkcs11
    config: "{keystore_uri(bench)}"
policy:
  - id: card
    keystore: token
    algorithm: {alg}
{sizes}    single-type-signing: {"on" if single else "off"}
    manual: {"on" if manual else "off"}
acl:
  - id: local
    address: 127.0.0.1
    action: transfer
template:
  - id: default
    storage: {zones}
zone:
  - domain: {ORIGIN}
    file: {ORIGIN}.zone
    dnssec-signing: on
    dnssec-policy: card
    acl: local
"""
    )
    write_zone(zones / f"{ORIGIN}.zone")
    if bench.user is not None:
        bench.chown(zones)
    return conf


def add_key(bench: Bench, conf: Path, key: str, as_user: bool = False) -> str:
    """A CSK on the token: generated there when the token can, else the card's key imported by its
    CKA_ID (``import-pkcs11``; a PIV card cannot generate through PKCS#11). Returns the key id."""
    alg = ALGORITHMS[key]
    if bench.card.can_generate:
        extra = ["size=2048"] if key == "rsa" else []
        res = bench.run(
            ["keymgr", "-c", conf, ORIGIN, "generate", f"algorithm={alg}", *extra, "ksk=yes", "zsk=yes"],
            as_user=as_user,
        )
        return res.stdout.strip().splitlines()[-1]
    kid = bench.card.keys[key].id.hex()
    res = bench.run(
        ["keymgr", "-c", conf, ORIGIN, "import-pkcs11", kid, f"algorithm={alg}", "ksk=yes", "zsk=yes"],
        as_user=as_user,
    )
    assert "OK" in res.stdout, res.explain()
    return kid


def key_tag(bench: Bench, conf: Path, key_id: str, as_user: bool = False) -> int:
    listing = bench.run(["keymgr", "-c", conf, ORIGIN, "list"], as_user=as_user).stdout
    for line in listing.splitlines():
        f = line.split()
        if f and f[0] == key_id:
            assert f[2] == "CSK", listing
            return int(f[1])
    raise AssertionError(f"key {key_id} not in keymgr list:\n{listing}")


@pytest.mark.parametrize("key", list(ALGORITHMS))
def test_keymgr_kzonesign(bench: Bench, key: str) -> None:
    """keymgr puts a CSK on the token, kzonesign signs with it; kzonecheck and ldns-verify-zone agree."""
    require("keymgr", "kzonesign", "kzonecheck", "ldns-verify-zone")
    conf = knot_conf(bench, ALGORITHMS[key])
    key_id = add_key(bench, conf, key)
    tag = key_tag(bench, conf, key_id)
    out = bench.mkdir("signed")
    bench.run(["kzonesign", "-c", conf, "-o", out, ORIGIN])
    signed = out / f"{ORIGIN}.zone"
    res = bench.run(["kzonecheck", "-o", ORIGIN, "-d", "on", signed], check=False, env={"PATH": bench.env["PATH"]})
    assert res.returncode == 0, f"kzonecheck rejects the zone:\n{res.explain()}"
    verify_ldns(bench, signed)
    rows = zone_records(signed)
    assert tag in dnskey_tags(rows), rows
    sigs = [f for f in rows if f[3] == "RRSIG"]
    assert sigs and {int(f[10]) for f in sigs} == {tag}
    signs = bench.check_audit(len(sigs), progs=["keymgr", "kzonesign"])
    assert signs["kzonesign"] >= len(sigs), signs


def test_knotd_zone_sign_as_knot(bench: Bench) -> None:
    """knotd (as user knot where the token can go with it) signs on load and on `knotc zone-sign`;
    dig +dnssec and an AXFR through ldns-verify-zone see the token key's signatures.

    On a token that can generate, knotd itself makes the key (automatic policy); on the PIV card
    the card's key is imported first and single-type-signing keeps knotd from wanting a ZSK."""
    require("keymgr", "knotd", "knotc", "dig", "ldns-verify-zone")
    user = bench.become("knot")
    port = free_port()
    generate = bench.card.can_generate
    conf = knot_conf(bench, ALGORITHMS["ec"], port=port, manual=False)
    if not generate:
        add_key(bench, conf, "ec", as_user=user is not None)
    as_user = user is not None
    knotd = bench.popen(["knotd", "-c", conf], bench.work / "knotd.log", as_user=as_user)
    served = Served(port, ("knotd", knotd, bench.work / "knotd.log"))
    _, tag = served.signed_dnskey()

    def serial() -> int:
        soa = [f for f in served.answer(ORIGIN, "SOA") if f[3] == "SOA"]
        return int(soa[0][6]) if soa else -1

    before = serial()
    signs_before = bench.check_audit(1, progs=["knotd"])["knotd"]
    bench.run(["knotc", "-c", conf, "zone-sign", ORIGIN], as_user=as_user)
    served.wait(lambda: serial() > before, "a new serial after knotc zone-sign")

    axfr = bench.work / "axfr.zone"
    axfr.write_text(dig(port, ORIGIN, "AXFR"))
    verify_ldns(bench, axfr)
    a = served.answer(f"host1.{ORIGIN}", "A")
    assert rrsig_tags(a, "A") == {tag}, a

    bench.run(["knotc", "-c", conf, "stop"], as_user=as_user, check=False)
    knotd.wait(timeout=30)
    signs = bench.check_audit(1, progs=["knotd"])
    assert signs["knotd"] > signs_before, f"knotc zone-sign made no token signature: {signs}"
    if user is not None:
        assert bench.daemon_uids("knotd") == {user.uid}


def test_knotd_one_key_card_needs_single_type_signing(bench: Bench) -> None:
    """Without single-type-signing knotd plans a ZSK beside the imported KSK and asks the card to
    generate it, which a PIV card cannot: the zone does not load."""
    if bench.card.can_generate:
        pytest.skip(f"--card={bench.card.kind} generates keys; this is about cards that cannot")
    require("keymgr", "knotd")
    conf = knot_conf(bench, ALGORITHMS["ec"], port=free_port(), manual=False, single=False)
    kid = bench.card.keys["ec"].id.hex()
    bench.run(["keymgr", "-c", conf, ORIGIN, "import-pkcs11", kid, "algorithm=ecdsap256sha256", "ksk=yes", "zsk=no"])
    log = bench.work / "knotd.log"
    knotd = bench.popen(["knotd", "-c", conf], log)
    failure = "DNSSEC, failed to update key set (key generation error)"
    wait_for(lambda: failure in log.read_text() or knotd.poll() is not None, "knotd to load the zone")
    assert failure in log.read_text(), log.read_text()
    bench.run(["knotc", "-c", conf, "stop"], check=False)
