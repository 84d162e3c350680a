"""Stock BIND 9.20 + pkcs11-provider signing with a key on a (virtual) card — the flows of issue 5.

Each flow runs on every backend of the `signer` fixture (see conftest.py) and is checked by
`dnssec-verify` run without any PKCS#11 module, so the verdict does not depend on the token.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from sc4testkit.zones import free_port, write_zone

from .conftest import Signer, record_time
from .zones import Named, answer_rrsig_tags, dig, inspect_signed, key_tag, named_conf

pytestmark = pytest.mark.bind

ORIGIN = "example.test"
ALGORITHMS = {"ECDSAP256SHA256": "ec", "RSASHA256": "rsa"}


def check_audit(signer: Signer, min_signs: int) -> Counter[str]:
    """The audit log verifies, records the card's signatures, and says who did what (src)."""
    if signer.shim is None:
        return Counter()
    verdict = signer.audit_verify()
    assert verdict.returncode == 0, f"sc4dnssec audit verify failed:\n{verdict.explain()}"
    records = signer.audit()
    sources = Counter(str(r["src"]) for r in records if r.get("src") is not None)
    functions = Counter(str(r.get("fn")) for r in records if r.get("src") == "card")
    # A signature is C_Sign (raw CKM_ECDSA/CKM_RSA_PKCS, SoftHSM) or C_SignFinal (OpenSC advertises
    # CKM_ECDSA_SHA256, so pkcs11-provider signs multi-part there); either way one "card" record.
    assert sources["card"] >= min_signs, (
        f"audit log has {sources['card']} operations by the card ({dict(functions)}), want >= {min_signs}"
    )
    signer.notes["audit"] = f"{len(records)} records; src: {dict(sources)}; card: {dict(functions)}"
    return sources


def keyfromlabel(signer: Signer, alg: str, key: str) -> str:
    res = signer.run(
        ["dnssec-keyfromlabel", "-l", signer.uri(key), "-a", alg, "-f", "KSK", ORIGIN], signing=True
    )
    base = res.stdout.strip().splitlines()[-1]
    private = (signer.work / f"{base}.private").read_text()
    assert "Label:" in private and "PrivateKey:" not in private, f"not a token key:\n{private}"
    assert "pin-value" not in private
    return base


def software_zsk(signer: Signer, alg: str) -> str:
    """The ZSK, in software (no provider loaded), kept apart from the token key's files."""
    zdir = signer.work / "zsk"
    zdir.mkdir(exist_ok=True)
    res = signer.run(["dnssec-keygen", "-K", zdir, "-a", alg, ORIGIN])
    base = f"zsk/{res.stdout.strip().splitlines()[-1]}"
    assert "PrivateKey:" in (signer.work / f"{base}.private").read_text()
    return base


def zone_with_keys(signer: Signer, names: int, *keys: str) -> Path:
    zone = signer.work / "zone.db"
    write_zone(zone, ORIGIN, names)
    with zone.open("a") as f:
        for k in keys:
            f.write((signer.work / f"{k}.key").read_text())
    return zone


def sign(signer: Signer, args: list[str], test: str, what: str) -> float:
    start = time.monotonic()
    signer.run(["dnssec-signzone", *args], signing=True, timeout=1800)
    seconds = time.monotonic() - start
    record_time(f"{test}[{signer.name}]", what, seconds)
    return seconds


def verify(signer: Signer, *args: str) -> str:
    res = signer.run(["dnssec-verify", *args, "-o", ORIGIN, "zone.db.signed"], check=False)
    assert res.returncode == 0, f"dnssec-verify rejects the zone:\n{res.explain()}"
    assert "Zone fully signed" in res.stdout + res.stderr
    return res.stdout + res.stderr


def split_sign(signer: Signer, names: int = 300, threads: int = 1, test: str = "split") -> tuple[str, str]:
    ksk = keyfromlabel(signer, "ECDSAP256SHA256", "ec")
    zsk = software_zsk(signer, "ECDSAP256SHA256")
    zone_with_keys(signer, names, ksk, zsk)
    sign(
        signer,
        ["-n", str(threads), "-x", "-o", ORIGIN, "-k", ksk, "zone.db", zsk],
        test,
        "signzone KSK card + ZSK sw",
    )
    verify(signer, "-x")
    signed = inspect_signed(signer.trixie, ORIGIN, signer.work / "zone.db.signed")
    kt, zt = key_tag(ksk), key_tag(zsk)
    assert signed.covered_by_tag.get(kt) == Counter({"DNSKEY": 1}), signed.covered_by_tag
    assert signed.by_tag[zt] == signed.rrsigs - 1
    return ksk, zsk


@pytest.mark.parametrize("alg", list(ALGORITHMS))
def test_seed_recipe_ksk_only_on_token_verifies(signer: Signer, alg: str) -> None:
    """Flow 1: keyfromlabel → DNSKEY into the zone → signzone -z → dnssec-verify -z."""
    ksk = keyfromlabel(signer, alg, ALGORITHMS[alg])
    zone_with_keys(signer, 100, ksk)
    sign(signer, ["-n", "1", "-x", "-z", "-o", ORIGIN, "-k", ksk, "zone.db"], "flow1", f"signzone -z {alg}")
    verify(signer, "-z")
    signed = inspect_signed(signer.trixie, ORIGIN, signer.work / "zone.db.signed")
    assert set(signed.by_tag) == {key_tag(ksk)}, signed.by_tag
    check_audit(signer, signed.rrsigs)


def test_split_ksk_on_token_zsk_in_software_verifies(signer: Signer) -> None:
    """Flow 2: the usual deployment; dnssec-verify without -z."""
    split_sign(signer, test="flow2")
    check_audit(signer, 1)


def test_named_serves_zone_signed_by_token_key(signer: Signer) -> None:
    """Flow 3: named on 127.0.0.1:<high port> answers dig +dnssec with the token KSK's RRSIG."""
    ksk, zsk = split_sign(signer, test="flow3")
    port = free_port()
    conf = named_conf(
        signer.work, port, f'zone "{ORIGIN}" {{ type primary; file "{signer.work}/zone.db.signed"; }};'
    )
    # Serving a pre-signed zone needs no key: named runs without OPENSSL_CONF.
    with Named(signer.trixie, conf, {}, signer.work / "named.log") as named:
        out, waited = named.wait_for(port, ORIGIN, "DNSKEY", "DNSKEY")
        record_time(f"flow3[{signer.name}]", "named first signed answer", waited)
        assert key_tag(ksk) in answer_rrsig_tags(out, "DNSKEY"), out
        a = dig(signer.trixie, port, f"host7.{ORIGIN}", "A")
        assert answer_rrsig_tags(a, "A") == [key_tag(zsk)], a
        rc = named.stop()
    assert rc == 0, f"named exited {rc} on SIGTERM:\n{named.log_text()}"


def _policy_conf(signer: Signer, port: int) -> Path:
    keys = signer.work / "keys"
    keys.mkdir()
    write_zone(signer.work / "policy.db", ORIGIN, 50)
    return named_conf(
        signer.work,
        port,
        f"""
key-store "card" {{
    directory "{keys}";
    pkcs11-uri "pkcs11:token={signer.token};pin-source={signer.pin_file}";
}};
dnssec-policy "card" {{
    keys {{
        ksk key-store "card" lifetime unlimited algorithm ecdsap256sha256;
        zsk lifetime unlimited algorithm ecdsap256sha256;
    }};
}};
zone "{ORIGIN}" {{
    type primary;
    file "{signer.work}/policy.db";
    dnssec-policy "card";
    inline-signing yes;
    key-directory "{keys}";
}};
""",
    )


def _ksk_files(keys: Path) -> dict[str, str]:
    out = {}
    for state in keys.glob("K*.state"):
        if "KSK: yes" in state.read_text():
            private = state.with_suffix(".private")
            out[state.stem] = private.read_text() if private.exists() else ""
    return out


def test_named_dnssec_policy_generates_ksk_on_token(signer: Signer) -> None:
    """Flow 4: key-store + dnssec-policy. A token that can generate keys (SoftHSM, the SmartCard-HSM)
    gets the KSK; one that cannot (the PIV card: no key generation through PKCS#11) must fail
    loudly, never fall back to a software KSK (Debian 12's BIND 9.18 does exactly that)."""
    port = free_port()
    conf = _policy_conf(signer, port)
    keys = signer.work / "keys"
    with Named(signer.trixie, conf, signer.sign_env, signer.work / "named.log") as named:
        if signer.can_generate:
            out, waited = named.wait_for(port, ORIGIN, "DNSKEY", "DNSKEY")
            record_time(f"flow4[{signer.name}]", "named keygen on token + first answer", waited)
            ksks = _ksk_files(keys)
            assert len(ksks) == 1, ksks
            ((base, private),) = ksks.items()
            assert "Label:" in private and "PrivateKey:" not in private, (
                f"KSK is not on the token:\n{private}"
            )
            assert key_tag(base) in answer_rrsig_tags(out, "DNSKEY"), out
            pin = signer.pin_file.read_text()
            objects = signer.pkcs11_tool("--token-label", signer.token, "--login", "--pin", pin, "-O").stdout
            assert "-ksk-" in objects, objects
        else:
            # BIND 9.20 logs "keystore: failed to generate PKCS#11 object ..." and
            # "zone_rekey failure" and retries later; it does not fall back to software.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and named.proc.poll() is None:
                if "zone_rekey failure" in named.log_text():
                    break
                time.sleep(0.3)
            time.sleep(1)
            log = named.log_text()
            ksks = _ksk_files(keys)
            software = {k: v for k, v in ksks.items() if "PrivateKey:" in v}
            assert not software, f"named fell back to a software KSK: {list(software)}\n{log}"
            out = dig(signer.trixie, port, ORIGIN, "DNSKEY")
            assert not answer_rrsig_tags(out, "DNSKEY"), f"zone got signed without a token KSK:\n{out}"
            assert "failed to generate PKCS#11 object" in log, log
    if signer.shim is not None:
        check_audit(signer, 0)


@pytest.mark.slow_card
def test_four_signing_threads_verify_and_audit(signer: Signer) -> None:
    """Flow 5: dnssec-signzone -n 4 with every RRset signed by the token key; the zone verifies and
    the audit log verifies and tells card work from software work. On the PIV backend the card
    takes SLOW_CARD_MS per signature (a real card's speed), so the zone is smaller."""
    ksk = keyfromlabel(signer, "ECDSAP256SHA256", "ec")
    zone_with_keys(signer, 20 if signer.name.startswith("piv") else 300, ksk)
    sign(signer, ["-n", "4", "-x", "-z", "-o", ORIGIN, "-k", ksk, "zone.db"], "flow5", "signzone -n 4 -z EC")
    verify(signer, "-z")
    signed = inspect_signed(signer.trixie, ORIGIN, signer.work / "zone.db.signed")
    assert set(signed.by_tag) == {key_tag(ksk)}
    check_audit(signer, signed.rrsigs)


def test_openssl_cnf_from_the_installed_cli_loads_the_provider(trixie, shim) -> None:  # type: ignore[no-untyped-def]
    """`sc4dnssec openssl-cnf` inside the root names the root's provider and the shim, early-loading."""
    provider = trixie.find_lib("pkcs11.so")
    text = trixie.run([shim.cli, "openssl-cnf", "--module", shim.module, "--provider", provider]).stdout
    assert f"module = {provider}" in text and f"pkcs11-module-path = {shim.module}" in text
    assert "pkcs11-module-load-behavior = early" in text


def test_named_dnssec_policy_uses_premade_token_ksk(signer: Signer) -> None:
    """named signs with a KSK that already lives on the token (made by the card's own tools, imported
    with dnssec-keyfromlabel) under dnssec-policy: the deployment for cards that cannot generate
    keys through PKCS#11. named must use that key, not make a new KSK."""
    keys = signer.work / "keys"
    keys.mkdir()
    res = signer.run(
        [
            "dnssec-keyfromlabel",
            "-K",
            keys,
            "-l",
            signer.uri("ec"),
            "-a",
            "ECDSAP256SHA256",
            "-f",
            "KSK",
            ORIGIN,
        ],
        signing=True,
    )
    ksk = res.stdout.strip().splitlines()[-1]
    write_zone(signer.work / "policy.db", ORIGIN, 50)
    port = free_port()
    conf = named_conf(
        signer.work,
        port,
        f"""
dnssec-policy "card" {{
    keys {{
        ksk key-directory lifetime unlimited algorithm ecdsap256sha256;
        zsk key-directory lifetime unlimited algorithm ecdsap256sha256;
    }};
}};
zone "{ORIGIN}" {{
    type primary;
    file "{signer.work}/policy.db";
    dnssec-policy "card";
    inline-signing yes;
    key-directory "{keys}";
}};
""",
    )
    with Named(signer.trixie, conf, signer.sign_env, signer.work / "named.log") as named:
        out, waited = named.wait_for(port, ORIGIN, "DNSKEY", "DNSKEY")
        record_time(f"premade[{signer.name}]", "named with card KSK, first answer", waited)
        assert answer_rrsig_tags(out, "DNSKEY") and key_tag(ksk) in answer_rrsig_tags(out, "DNSKEY"), (
            f"{out}\n{named.log_text()}"
        )
        ksks = _ksk_files(keys)
        assert list(ksks) == [ksk], f"named made another KSK: {list(ksks)}\n{named.log_text()}"
    if signer.shim is not None:
        check_audit(signer, 1)
