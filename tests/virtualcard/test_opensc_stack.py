"""The virtual PIV card as OpenSC sees it: pcscd -> vpcd -> card -> OpenSC PIV -> opensc-pkcs11."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from vc_helpers import certificate, open_session, p11tool, p11tool_sign, sign, verify_ecdsa_raw, verify_rsa_pkcs1

from shim.constants import CKM
from virtualcard.pytest_plugin import VirtualCard

DATA = b"example.com. 3600 IN DNSKEY 257 3 13 ..."


@pytest.fixture(scope="module")
def vcard(card_factory) -> Iterator[VirtualCard]:  # type: ignore[no-untyped-def]
    """One pristine card for the read-only tests of this module; its reader is freed afterwards
    (the session's pcscd has 4 readers, and later modules need theirs)."""
    vc = card_factory()
    yield vc
    vc.stop()


@pytest.fixture
def scratch_card(card_factory):  # type: ignore[no-untyped-def]
    """A card the test may change (PINs, keys, removal); stopped afterwards to free its reader."""
    vc = card_factory()
    yield vc
    vc.stop()


def test_opensc_tool_sees_a_piv_card(vcard: VirtualCard) -> None:
    env = vcard.info.subprocess_env()
    listing = subprocess.run(
        ["opensc-tool", "-l"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert any(vcard.info.reader in line and " Yes " in line for line in listing.splitlines()), listing
    name = subprocess.run(
        ["opensc-tool", "-r", vcard.info.reader, "-n"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "Personal Identity Verification Card" in name


def test_pkcs11_tool_lists_token_keys_and_mechanisms(vcard: VirtualCard) -> None:
    info = vcard.info
    slots = p11tool(info, "-L").stdout
    assert f"token label        : {info.token_label}" in slots
    objects = p11tool(info, "--login", "--pin", info.pin, "-O").stdout
    for key in info.keys.values():
        assert f"label:      {key.label}" in objects
        assert f"ID:         {key.id.hex()}" in objects
    assert "Private Key Object; EC" in objects and "Private Key Object; RSA" in objects
    mechs = p11tool(info, "-M").stdout
    assert "ECDSA, keySize={256,384}, hw, sign" in mechs  # EC enabled: the ATR took the plain PIV path
    assert "RSA-PKCS, " in mechs and "SHA256-RSA-PKCS" in mechs
    assert "ECDSA-KEY-PAIR-GEN" not in mechs and "RSA-PKCS-KEY-PAIR-GEN" not in mechs


def test_cardinfo_describes_the_card(vcard: VirtualCard) -> None:
    info = vcard.info
    assert info.kind == "virtual" and info.module.endswith("opensc-pkcs11.so")
    assert info.keys["ec"] == info.keys["ec"].__class__("PIV AUTH key", b"\x01", "EC", curve="secp256r1")
    assert info.keys["rsa"].id == b"\x03" and info.keys["rsa"].bits == 2048
    assert info.env["PCSCLITE_CSOCK_NAME"].endswith("/pcscd/pcscd.comm")
    assert not info.writable and not info.can_generate


def test_ecdsa_and_rsa_signatures_via_pykcs11_verify(vcard: VirtualCard) -> None:
    s = open_session(vcard.info)
    try:
        ec_id, rsa_id = vcard.info.keys["ec"].id, vcard.info.keys["rsa"].id
        ec_pub = certificate(s, ec_id).public_key()
        rsa_pub = certificate(s, rsa_id).public_key()
        assert isinstance(ec_pub, ec.EllipticCurvePublicKey) and isinstance(rsa_pub, rsa.RSAPublicKey)
        verify_ecdsa_raw(ec_pub, sign(s, ec_id, CKM.ECDSA_SHA256, DATA), DATA)
        digest = hashlib.sha256(DATA).digest()
        verify_ecdsa_raw(ec_pub, sign(s, ec_id, CKM.ECDSA, digest), digest, prehashed=True)
        verify_rsa_pkcs1(rsa_pub, sign(s, rsa_id, CKM.SHA256_RSA_PKCS, DATA), DATA)
    finally:
        s.logout()
        s.closeSession()


def test_ecdsa_and_rsa_signatures_via_pkcs11_tool_verify(vcard: VirtualCard, tmp_path: Path) -> None:
    info = vcard.info
    (tmp_path / "data").write_bytes(DATA)
    pubs = {}
    for name in ("ec", "rsa"):
        kid = info.keys[name].id.hex()
        p11tool(info, "--read-object", "--type", "pubkey", "--id", kid, "-o", str(tmp_path / f"{name}.der"))
        pubs[name] = serialization.load_der_public_key((tmp_path / f"{name}.der").read_bytes())
        mech = "ECDSA-SHA256" if name == "ec" else "SHA256-RSA-PKCS"
        p11tool_sign(info, kid, mech, tmp_path / "data", tmp_path / f"{name}.sig")
    verify_ecdsa_raw(pubs["ec"], (tmp_path / "ec.sig").read_bytes(), DATA)  # type: ignore[arg-type]
    verify_rsa_pkcs1(pubs["rsa"], (tmp_path / "rsa.sig").read_bytes(), DATA)  # type: ignore[arg-type]


def test_wrong_pin_counts_down_blocks_and_puk_unblocks(scratch_card: VirtualCard) -> None:
    info = scratch_card.info
    for left in (2, 1):
        r = p11tool(info, "--login", "--pin", "999999", "-O", check=False)
        assert "CKR_PIN_INCORRECT" in r.stderr + r.stdout
        assert scratch_card.state.counters.pin_tries_left == left
    r = p11tool(info, "--login", "--pin", "999999", "-O", check=False)
    assert scratch_card.state.counters.pin_tries_left == 0
    r = p11tool(info, "--login", "--pin", info.pin, "-O", check=False)
    assert "CKR_PIN_LOCKED" in r.stderr + r.stdout, r.stderr  # even the right PIN is refused
    # OpenSC's default pin_unblock_style (none) turns `pkcs11-tool --unlock-pin` into CHANGE
    # REFERENCE DATA with the PUK as old PIN (-> CKR_PIN_LOCKED); yubico-piv-tool sends RESET
    # RETRY COUNTER as a PIV client should.
    r = p11tool(info, "--unlock-pin", "--puk", "12345678", "--new-pin", "654321", check=False)
    assert "CKR_PIN_LOCKED" in r.stderr
    subprocess.run(
        ["yubico-piv-tool", "-r", info.reader, "-a", "unblock-pin", "-P", "12345678", "-N", "654321"],
        env=info.subprocess_env(),
        check=True,
        capture_output=True,
    )
    assert scratch_card.state.counters.pin_tries_left == 3
    assert scratch_card.state.counters.pin == "654321"
    r = p11tool(info, "--login", "--pin", "654321", "-O", "--type", "privkey")
    assert "PIV AUTH key" in r.stdout


def test_yubico_piv_tool_generates_key_and_imports_certificate(
    scratch_card: VirtualCard, tmp_path: Path
) -> None:
    """On-card keygen (9C EC P-256, retired 82 RSA-2048) + certificate import, then both sign."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    info = scratch_card.info
    env = info.subprocess_env()
    ykpiv = ["yubico-piv-tool", "-r", info.reader]
    ca = ec.generate_private_key(ec.SECP256R1())
    for slot, alg, kid in (("9c", "ECCP256", "02"), ("82", "RSA2048", "05")):
        pub_pem = subprocess.run(
            [*ykpiv, "-a", "generate", "-s", slot, "-A", alg], env=env, capture_output=True, check=True
        ).stdout
        pub = serialization.load_pem_public_key(pub_pem)
        # yubico-piv-tool 2.2's selfsign-certificate fails before reaching the card with
        # OpenSSL 3, so the certificate is issued here; keyUsage must include digitalSignature.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"on-card {slot}")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            .sign(ca, hashes.SHA256())
        )
        (tmp_path / f"{slot}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        subprocess.run(
            [*ykpiv, "-a", "import-certificate", "-s", slot, "-i", str(tmp_path / f"{slot}.pem")],
            env=env,
            capture_output=True,
            check=True,
        )
        r = subprocess.run(
            [
                *ykpiv,
                "-a",
                "verify-pin",
                "-P",
                info.pin,
                "-a",
                "test-signature",
                "-s",
                slot,
                "-i",
                str(tmp_path / f"{slot}.pem"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0 and "verification" in r.stdout + r.stderr, r.stderr
        # ... and through opensc-pkcs11 in a fresh process (9C is always-authenticate)
        (tmp_path / "data").write_bytes(DATA)
        mech = "ECDSA-SHA256" if alg.startswith("ECC") else "SHA256-RSA-PKCS"
        sig = p11tool_sign(info, kid, mech, tmp_path / "data", tmp_path / "sig")
        if isinstance(pub, ec.EllipticCurvePublicKey):
            verify_ecdsa_raw(pub, sig, DATA)
        else:
            assert isinstance(pub, rsa.RSAPublicKey)
            verify_rsa_pkcs1(pub, sig, DATA)


def test_removal_mid_session_gives_device_removed_and_reinsertion_works(scratch_card: VirtualCard) -> None:
    import PyKCS11

    info = scratch_card.info
    kid = info.keys["ec"].id
    s = open_session(info)
    sign(s, kid, CKM.ECDSA_SHA256, DATA)
    scratch_card.remove()
    with pytest.raises(PyKCS11.PyKCS11Error) as exc:
        sign(s, kid, CKM.ECDSA_SHA256, DATA)
    assert exc.value.value == int(PyKCS11.CKR_DEVICE_REMOVED) or exc.value.value in (
        PyKCS11.CKR_SESSION_HANDLE_INVALID,
        PyKCS11.CKR_TOKEN_NOT_PRESENT,
    ), exc.value
    scratch_card.insert()
    s2 = open_session(info)
    try:
        pub = certificate(s2, kid).public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        verify_ecdsa_raw(pub, sign(s2, kid, CKM.ECDSA_SHA256, DATA), DATA)
    finally:
        s2.closeSession()


def test_two_cards_in_two_readers_sign_concurrently(card_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two slow cards (200 ms/signature): signing on both at once takes ~half the serial time.

    Each signer's OpenSC sees only its own reader: OpenSC processes that see both cards wait for
    each other's card transactions and serialise (measured: 1.1 s instead of 0.57 s here).
    """
    cards = [card_factory(latency_ms=200), card_factory(latency_ms=200)]
    try:
        (tmp_path / "data").write_bytes(DATA)
        n = 3

        def run(vc: VirtualCard, i: int) -> None:
            c = vc.info
            for j in range(n):
                subprocess.run(
                    [
                        "pkcs11-tool",
                        "--module",
                        c.module,
                        "--token-label",
                        c.token_label,
                        "--login",
                        "--pin",
                        c.pin,
                        "--sign",
                        "-m",
                        "ECDSA-SHA256",
                        "--id",
                        "01",
                        "-i",
                        str(tmp_path / "data"),
                        "-o",
                        str(tmp_path / f"sig{i}.{j}"),
                    ],
                    env=vc.isolated_env(),
                    check=True,
                    capture_output=True,
                    timeout=60,
                )

        t0 = time.monotonic()
        run(cards[0], 9)  # one signer alone: the serial baseline
        alone = time.monotonic() - t0
        t0 = time.monotonic()
        threads = [threading.Thread(target=run, args=(vc, i)) for i, vc in enumerate(cards)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        assert all((tmp_path / f"sig{i}.{j}").stat().st_size == 64 for i in range(2) for j in range(n))
        assert alone >= n * 0.200  # the latency knob is applied
        assert elapsed < 1.5 * alone, f"not concurrent: {elapsed:.2f}s for two, {alone:.2f}s for one"
    finally:
        for vc in cards:
            vc.stop()


def test_state_persists_across_down_and_up(tmp_path: Path) -> None:
    """`virtualcard up` / `down` / `up` in subprocesses: same keys, same PIN counters."""
    state = Path(os.environ.get("TMPDIR", "/tmp")) / f"vcard-persist-{os.getpid()}"
    cli = ["python3", "-m", "virtualcard.cli"]
    cwd = Path(__file__).resolve().parents[2]
    base_env = {k: v for k, v in os.environ.items() if k != "PCSCLITE_CSOCK_NAME"}

    def up() -> dict[str, str]:
        out = subprocess.run(
            [*cli, "up", str(state)], cwd=cwd, env=base_env, capture_output=True, text=True, check=True
        ).stdout
        exports = {}
        for line in out.splitlines():
            k, _, v = line.removeprefix("export ").partition("=")
            exports[k] = v.strip("'")
        return exports

    try:
        e1 = up()
        env = {**base_env, **e1}
        (tmp_path / "data").write_bytes(DATA)
        mod = e1["SC4DNSSEC_BACKEND"]
        tool = ["pkcs11-tool", "--module", mod, "--token-label", e1["VIRTUALCARD_TOKEN_LABEL"]]
        subprocess.run(
            [
                *tool,
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                e1["VIRTUALCARD_EC_ID"],
                "-o",
                str(tmp_path / "pub.der"),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run([*tool, "--login", "--pin", "000000", "-O"], env=env, capture_output=True)
        subprocess.run([*cli, "down", str(state)], cwd=cwd, env=base_env, check=True)
        e2 = up()
        assert e2["VIRTUALCARD_TOKEN_LABEL"] == e1["VIRTUALCARD_TOKEN_LABEL"]
        env = {**base_env, **e2}
        status = subprocess.run(
            [*cli, "status", str(state)], cwd=cwd, env=base_env, capture_output=True, text=True, check=True
        ).stdout
        assert "PIN tries left 2/3" in status
        subprocess.run(
            [
                *tool,
                "--login",
                "--pin",
                e2["VIRTUALCARD_PIN"],
                "--sign",
                "-m",
                "ECDSA-SHA256",
                "--id",
                e2["VIRTUALCARD_EC_ID"],
                "-i",
                str(tmp_path / "data"),
                "-o",
                str(tmp_path / "sig"),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        pub = serialization.load_der_public_key((tmp_path / "pub.der").read_bytes())
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        verify_ecdsa_raw(pub, (tmp_path / "sig").read_bytes(), DATA)
    finally:
        subprocess.run([*cli, "down", str(state)], cwd=cwd, env=base_env)
        import shutil

        shutil.rmtree(state, ignore_errors=True)
