"""The virtual PIV card through Yubico's libykcs11 (a second PKCS#11 backend over the same card):
pcscd -> vpcd -> card -> libykcs11.so, driven with pkcs11-tool, checked with ``cryptography``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from vc_helpers import p11tool, p11tool_sign, verify_ecdsa_raw, verify_rsa_pkcs1

from sc4testkit.tokens import VIRTUAL_YKCS11
from virtualcard.harness import YUBICO_READER_NAME, Harness, HarnessError, ykcs11_module
from virtualcard.pytest_plugin import VirtualCard, start_virtual_card
from virtualcard.state import DEFAULT_MGMT_KEY

DATA = b"example.com. 3600 IN DNSKEY 257 3 13 ..."


@pytest.fixture(scope="module")
def ykcard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualCard]:
    """A PIV card in its own pcscd whose readers carry the Yubico name libykcs11 insists on."""
    try:
        ykcs11_module()
    except HarnessError as e:
        pytest.skip(str(e))
    run = Path(tempfile.mkdtemp(prefix="vcard-yk-"))
    h = Harness(run, readers=2, reader_prefix=YUBICO_READER_NAME)
    try:
        h.start()
    except (HarnessError, OSError) as e:
        shutil.rmtree(run, ignore_errors=True)
        pytest.skip(f"virtual card stack unavailable: {e}")
    try:
        yield start_virtual_card(h, tmp_path_factory.mktemp("yk-state"), kind=VIRTUAL_YKCS11)
    finally:
        h.stop()
        shutil.rmtree(run, ignore_errors=True)


def _pub(card: VirtualCard, key_id: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    out = tmp_path / f"pub{key_id}.der"
    p11tool(card.info, "--read-object", "--type", "pubkey", "--id", key_id, "-o", str(out))
    return serialization.load_der_public_key(out.read_bytes())


def test_ykcs11_lists_the_piv_card_as_a_yubikey(ykcard: VirtualCard) -> None:
    info = ykcard.info
    assert info.module.endswith("libykcs11.so") and info.token_label.startswith("YubiKey PIV #")
    assert info.keys["ec"].label == "Private key for PIV Authentication" and info.keys["ec"].id == b"\x01"
    mechs = p11tool(info, "-M").stdout
    assert "ECDSA-KEY-PAIR-GEN" in mechs and "RSA-PKCS-KEY-PAIR-GEN" in mechs


def test_ykcs11_signs_with_the_provisioned_keys(ykcard: VirtualCard, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(DATA)
    ec_key = ykcard.info.keys["ec"].id.hex()
    rsa_key = ykcard.info.keys["rsa"].id.hex()
    pub = _pub(ykcard, ec_key, tmp_path)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    verify_ecdsa_raw(pub, p11tool_sign(ykcard.info, ec_key, "ECDSA-SHA256", data, tmp_path / "ec.sig"), DATA)
    rpub = _pub(ykcard, rsa_key, tmp_path)
    assert isinstance(rpub, rsa.RSAPublicKey)
    verify_rsa_pkcs1(rpub, p11tool_sign(ykcard.info, rsa_key, "SHA256-RSA-PKCS", data, tmp_path / "r.sig"), DATA)


def test_ykcs11_generates_on_the_piv_card_after_an_so_login(ykcard: VirtualCard, tmp_path: Path) -> None:
    info = ykcard.info
    as_user = p11tool(info, "--login", "--pin", info.pin, "--keypairgen", "--key-type", "EC:prime256v1",
                      "--id", "02", check=False)
    assert as_user.returncode != 0 and "CKR_USER_TYPE_INVALID" in as_user.stdout + as_user.stderr
    p11tool(info, "--login", "--login-type", "so", "--so-pin", DEFAULT_MGMT_KEY.hex(), "--keypairgen",
            "--key-type", "EC:prime256v1", "--id", "02")
    assert ykcard.state.get_key(0x9C) is not None  # id 02 is slot 9C (digital signature)
    data = tmp_path / "data"
    data.write_bytes(DATA)
    sig = p11tool_sign(info, "02", "ECDSA-SHA256", data, tmp_path / "new.sig")
    pub = _pub(ykcard, "02", tmp_path)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    verify_ecdsa_raw(pub, sig, DATA)
    assert pub.public_numbers() == ykcard.state.get_key(0x9C).public_key().public_numbers()  # type: ignore[union-attr]
