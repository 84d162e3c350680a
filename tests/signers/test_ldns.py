"""ldns-signzone through libp11's OpenSSL engine and the shim: KSK on the token, ZSK in software
(docs/ldns.md).

ldns-signzone has no server; the signed file is what it produces, judged by ldns-verify-zone run
without the engine configuration.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from .conftest import ORIGIN, Bench, dnskey_tags, require, verify_ldns, write_zone, zone_records

pytestmark = pytest.mark.signers

ENGINE_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so",
)
ALGORITHMS = {"ec": ("13", "ECDSAP256SHA256"), "rsa": ("8", "RSASHA256")}


def engine_cnf(bench: Bench) -> Path:
    """OPENSSL_CONF for the signing process only: libp11's engine with the shim as its module."""
    engine = next((p for p in ENGINE_CANDIDATES if Path(p).exists()), None)
    if engine is None:
        pytest.fail("libp11's OpenSSL engine (engines-3/pkcs11.so) is missing: apt-get install "
                    "libengine-pkcs11-openssl", pytrace=False)
    cnf = bench.work / "openssl.cnf"
    cnf.write_text(
        f"""openssl_conf = openssl_init

[openssl_init]
engines = engine_section

[engine_section]
pkcs11 = pkcs11_section

[pkcs11_section]
engine_id = pkcs11
dynamic_path = {engine}
MODULE_PATH = {bench.module}
init = 1
"""
    )
    return cnf


@pytest.mark.parametrize("key,pin", [("ec", "pin-value"), ("rsa", "pin-source")])
def test_ldns_signzone_ksk_on_token(bench: Bench, key: str, pin: str) -> None:
    """The KSK on the token signs the DNSKEY RRset, the software ZSK the rest. ldns-signzone
    echoes the engine key id, the whole URI, to stdout: with pin-value that is the PIN, with
    pin-source (libp11 reads the file) only the file's path."""
    require("ldns-signzone", "ldns-keygen", "ldns-verify-zone")
    number, name = ALGORITHMS[key]
    cnf = engine_cnf(bench)
    zsk = bench.run(["ldns-keygen", "-a", name, ORIGIN], env={"PATH": bench.env["PATH"]}).stdout.strip()
    zone = bench.work / "zone.db"
    write_zone(zone)
    with zone.open("a") as f:
        f.write((bench.work / f"{zsk}.key").read_text())
    k = bench.card.keys[key]
    if pin == "pin-source":
        pin_file = bench.work / "pin"
        pin_file.write_text(bench.card.pin)  # no newline
        pin_file.chmod(0o600)
        pin_attr = f"pin-source={pin_file}"
    else:
        pin_attr = f"pin-value={bench.card.pin}"
    uri = (
        f"pkcs11:token={quote(bench.card.token_label, safe='')};object={quote(k.label, safe='')};"
        f"type=private;{pin_attr}"
    )
    res = bench.run(
        ["ldns-signzone", "-E", "pkcs11", "-K", f"{number},{uri}", "-o", ORIGIN, zone, zsk],
        env={**bench.env, "OPENSSL_CONF": str(cnf)},
    )
    assert f"Engine key id: {uri}" in res.stdout, res.explain()
    assert (bench.card.pin in res.stdout) == (pin == "pin-value"), res.explain()
    signed = bench.work / "zone.db.signed"
    verify_ldns(bench, signed)
    rows = zone_records(signed)
    tags = dnskey_tags(rows)
    ksk = [t for t, flags in tags.items() if flags == 257]
    zsk_tag = [t for t, flags in tags.items() if flags == 256]
    assert len(ksk) == 1 and len(zsk_tag) == 1, tags
    by_ksk = {f[4] for f in rows if f[3] == "RRSIG" and int(f[10]) == ksk[0]}
    assert by_ksk == {"DNSKEY"}, f"the token key signed {by_ksk}, want only the DNSKEY RRset"
    others = {f[4] for f in rows if f[3] == "RRSIG" and int(f[10]) == zsk_tag[0]}
    assert {"SOA", "A", "NSEC"} <= others
    signs = bench.check_audit(1, progs=["ldns-signzone"])
    assert signs["ldns-signzone"] == 1, f"one token signature (the DNSKEY RRset) expected: {signs}"
