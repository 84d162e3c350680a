"""The virtual SmartCard-HSM: APDUs against the card object, then the whole stack
(pcscd -> vpcd -> card -> OpenSC sc-hsm driver -> opensc-pkcs11) with pkcs11-tool, pkcs15-tool
and sc-hsm-tool, signatures checked with ``cryptography``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from vc_helpers import p11tool, p11tool_sign, verify_ecdsa_raw, verify_rsa_pkcs1

from virtualcard import schsm
from virtualcard.apdu import parse_tlv, tlv
from virtualcard.cvc import CURVES, OID_ECDSA_SHA256, OID_RSA_V15_SHA256, public_key_from_cvc
from virtualcard.profiles import get_profile
from virtualcard.pytest_plugin import VirtualCard

DATA = b"example.com. 3600 IN DNSKEY 257 3 13 ..."
SO = bytes.fromhex(schsm.DEFAULT_SO_PIN)


# -- APDU level ---------------------------------------------------------------------------
@pytest.fixture
def hsm(tmp_path: Path) -> schsm.SmartCardHSM:
    state = schsm.HSMState(tmp_path / "hsm")
    state.manufacture()
    card = schsm.SmartCardHSM(state, get_profile("fast", family="sc-hsm"))
    assert card.process(b"\x00\xa4\x04\x0c\x0b" + schsm.AID)[-2:] == b"\x90\x00"
    init = tlv(0x80, b"\x00\x01") + tlv(0x81, b"123456") + tlv(0x82, SO) + tlv(0x91, b"\x03")
    assert card.process(bytes([0x80, 0x50, 0, 0, len(init)]) + init) == b"\x90\x00"
    return card


def _apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    """Extended encoding, as OpenSC sends it to this card."""
    out = bytes([cla, ins, p1, p2])
    if data:
        out += b"\x00" + len(data).to_bytes(2, "big") + data
    if le is not None:
        out += (b"" if data else b"\x00") + (le % 65536).to_bytes(2, "big")
    return out


def _verify(card: schsm.SmartCardHSM, pin: bytes) -> bytes:
    return card.process(_apdu(0, 0x20, 0, 0x81, pin))[-2:]


def test_user_pin_counts_down_blocks_and_the_so_pin_unblocks(hsm: schsm.SmartCardHSM) -> None:
    assert hsm.process(_apdu(0, 0x20, 0, 0x81)) == b"\x63\xc3"
    assert _verify(hsm, b"000000") == b"\x63\xc2"
    assert _verify(hsm, b"000000") == b"\x63\xc1"
    assert _verify(hsm, b"000000") == b"\x63\xc0"
    assert _verify(hsm, b"123456") == b"\x69\x83"  # blocked, even with the right PIN
    # RESET RETRY COUNTER with a wrong SO PIN costs an SO try and unblocks nothing
    assert hsm.process(_apdu(0, 0x2C, 0, 0x81, b"\x00" * 8 + b"654321"))[-2:] == b"\x63\xce"
    assert hsm.process(_apdu(0, 0x2C, 0, 0x81, SO + b"654321"))[-2:] == b"\x90\x00"
    assert _verify(hsm, b"654321") == b"\x90\x00"
    assert hsm.process(_apdu(0, 0x20, 0, 0x81)) == b"\x90\x00"
    assert hsm.state.counters.so_tries_left == schsm.SO_RETRIES


def test_change_pin_keeps_its_length_and_so_pin_changes(hsm: schsm.SmartCardHSM) -> None:
    assert hsm.process(_apdu(0, 0x24, 0, 0x81, b"123456" + b"98765"))[-2:] == b"\x67\x00"
    assert hsm.process(_apdu(0, 0x24, 0, 0x81, b"123456" + b"987654"))[-2:] == b"\x90\x00"
    assert _verify(hsm, b"987654") == b"\x90\x00"
    new_so = bytes.fromhex("0102030405060708")
    assert hsm.process(_apdu(0, 0x24, 0, 0x88, SO + new_so))[-2:] == b"\x90\x00"
    assert hsm.process(_apdu(0, 0x20, 0, 0x88, new_so))[-2:] == b"\x90\x00"
    assert hsm.process(_apdu(0, 0x20, 0, 0x85))[-2:] == b"\x6a\x88"  # no PIN pad


def test_reinitialisation_needs_the_so_pin_and_wipes_keys(hsm: schsm.SmartCardHSM) -> None:
    assert _verify(hsm, b"123456") == b"\x90\x00"
    _generate(hsm, 1, "EC")
    bad = tlv(0x81, b"111111") + tlv(0x82, b"\x00" * 8)
    assert hsm.process(_apdu(0x80, 0x50, 0, 0, bad))[-2:] == b"\x63\xce"
    good = tlv(0x81, b"111111") + tlv(0x82, SO)
    assert hsm.process(_apdu(0x80, 0x50, 0, 0, good))[-2:] == b"\x90\x00"
    assert hsm.state.key_ids() == []
    assert _verify(hsm, b"111111") == b"\x90\x00"


def _generate(card: schsm.SmartCardHSM, key_id: int, kind: str, curve: str = "secp256r1") -> bytes:
    if kind == "EC":
        c = CURVES[curve]
        pk = tlv(0x06, OID_ECDSA_SHA256) + b"".join(
            tlv(t, v) for t, v in ((0x81, c.p), (0x82, c.a), (0x83, c.b), (0x84, c.g), (0x85, c.n), (0x87, c.h))
        )
    else:
        pk = tlv(0x06, OID_RSA_V15_SHA256) + tlv(0x82, b"\x01\x00\x01") + tlv(0x02, (2048).to_bytes(2, "big"))
    body = tlv(0x5F29, b"\x00") + tlv(0x42, b"UTCA00001") + tlv(0x7F49, pk) + tlv(0x5F20, b"DEVC000000100001")
    resp = card.process(_apdu(0, 0x46, key_id, 0, body, le=0))
    assert resp[-2:] == b"\x90\x00", resp[-2:].hex()
    assert resp[0] == 0x67  # authenticated request: OpenSC makes public key objects only from these
    return resp[:-2]


@pytest.mark.parametrize("curve", ["secp256r1", "secp384r1"])
def test_ec_keygen_answers_a_cvc_request_and_signs_raw_ecdsa(hsm: schsm.SmartCardHSM, curve: str) -> None:
    assert hsm.process(_apdu(0, 0x46, 1, 0, b"", le=0))[-2:] == b"\x69\x82"  # PIN first
    assert _verify(hsm, b"123456") == b"\x90\x00"
    pub = public_key_from_cvc(_generate(hsm, 1, "EC", curve))
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == curve
    digest = hashes.Hash(hashes.SHA256())
    digest.update(DATA)
    resp = hsm.process(_apdu(0x80, 0x68, 1, schsm.ALG_EC_RAW, digest.finalize(), le=0))
    assert resp[-2:] == b"\x90\x00"
    pub.verify(resp[:-2], DATA, ec.ECDSA(hashes.SHA256()))  # DER, as the card sends it
    listing = hsm.process(_apdu(0x80, 0x58, 0, 0, le=0))
    assert b"\xcc\x01" in listing[:-2] and b"\xcc\x00" in listing[:-2]


def test_rsa_keygen_and_raw_rsa(hsm: schsm.SmartCardHSM) -> None:
    assert _verify(hsm, b"123456") == b"\x90\x00"
    pub = public_key_from_cvc(_generate(hsm, 2, "RSA"))
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
    h = hashes.Hash(hashes.SHA256())
    h.update(DATA)
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + h.finalize()
    block = b"\x00\x01" + b"\xff" * (256 - 3 - len(digest_info)) + b"\x00" + digest_info
    resp = hsm.process(_apdu(0x80, 0x68, 2, schsm.ALG_RSA_RAW, block, le=0))
    assert resp[-2:] == b"\x90\x00"
    pub.verify(resp[:-2], DATA, padding.PKCS1v15(), hashes.SHA256())
    assert hsm.process(_apdu(0x80, 0x68, 2, schsm.ALG_RSA_RAW, block[:-1], le=0))[-2:] == b"\x6a\x80"


def test_files_update_read_delete_and_keys_stay_inside(hsm: schsm.SmartCardHSM) -> None:
    write = tlv(0x54, b"\x00\x00") + tlv(0x53, b"hello world")
    assert hsm.process(_apdu(0, 0xD7, 0xCF, 0x01, write))[-2:] == b"\x69\x82"  # PIN first
    assert _verify(hsm, b"123456") == b"\x90\x00"
    assert hsm.process(_apdu(0, 0xD7, 0xCF, 0x01, write))[-2:] == b"\x90\x00"
    resp = hsm.process(_apdu(0, 0xB1, 0xCF, 0x01, tlv(0x54, b"\x00\x06"), le=100))
    assert resp == b"world\x62\x82"
    assert hsm.process(_apdu(0, 0xD7, 0x2F, 0x02, write))[-2:] == b"\x69\x85"  # device certificate
    _generate(hsm, 3, "EC")
    assert hsm.process(_apdu(0, 0xB1, 0xCC, 0x03, tlv(0x54, b"\x00\x00"), le=0))[-2:] == b"\x69\x82"
    assert hsm.process(_apdu(0, 0xE4, 0x02, 0x00, b"\xcf\x01"))[-2:] == b"\x90\x00"
    assert hsm.process(_apdu(0, 0xA4, 0x00, 0x04, b"\xcf\x01"))[-2:] == b"\x6a\x82"
    assert hsm.process(b"\x00\xa4")[-2:] == b"\x67\x00"  # malformed: a status word, no crash


def test_state_survives_a_new_card_process(hsm: schsm.SmartCardHSM) -> None:
    assert _verify(hsm, b"000000") == b"\x63\xc2"
    again = schsm.SmartCardHSM(schsm.HSMState(hsm.state.dir), get_profile("fast", family="sc-hsm"))
    assert again.process(_apdu(0, 0x20, 0, 0x81)) == b"\x63\xc2"


def test_profiles_belong_to_a_family() -> None:
    assert get_profile("nitrokey-hsm2", family="sc-hsm").sign_delay(0x11) == pytest.approx(0.167)
    with pytest.raises(ValueError, match="sc-hsm card"):
        get_profile("nitrokey-hsm2", family="piv")
    with pytest.raises(ValueError, match="piv card"):
        get_profile("yubikey5", family="sc-hsm")


# -- the real stack -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hsmcard(card_factory) -> Iterator[VirtualCard]:  # type: ignore[no-untyped-def]
    """The module's SmartCard-HSM; its reader is freed afterwards (the session's pcscd has 4)."""
    vc = card_factory(kind="virtual-schsm")
    yield vc
    vc.stop()


def _pubkey(card: VirtualCard, key_id: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    out = tmp_path / f"pub{key_id}.der"
    p11tool(card.info, "--read-object", "--type", "pubkey", "--id", key_id, "-o", str(out))
    return serialization.load_der_public_key(out.read_bytes())


def test_up_card_lists_mechanisms_objects_and_pkcs15(hsmcard: VirtualCard) -> None:
    info = hsmcard.info
    assert info.token_label.startswith("virtualcard-") and info.can_generate
    mechs = p11tool(info, "-M").stdout
    assert "ECDSA-KEY-PAIR-GEN" in mechs and "RSA-PKCS-KEY-PAIR-GEN" in mechs
    objs = p11tool(info, "-O").stdout
    assert "virtualcard ec key" in objs and "virtualcard rsa key" in objs
    dump = subprocess.run(
        ["pkcs15-tool", "-D"], env=hsmcard.isolated_env(), capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "Private EC Key [virtualcard ec key]" in dump and "SOPIN" in dump


def test_default_keys_sign_through_opensc(hsmcard: VirtualCard, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(DATA)
    ec_sig = p11tool_sign(hsmcard.info, "01", "ECDSA-SHA256", data, tmp_path / "ec.sig")
    verify_ecdsa_raw(_pubkey(hsmcard, "01", tmp_path), ec_sig, DATA)
    rsa_sig = p11tool_sign(hsmcard.info, "02", "SHA256-RSA-PKCS", data, tmp_path / "rsa.sig")
    verify_rsa_pkcs1(_pubkey(hsmcard, "02", tmp_path), rsa_sig, DATA)


def test_keypairgen_through_pkcs11_then_sign(card_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vc = card_factory(kind="virtual-schsm")
    try:
        info = vc.info
        p11tool(info, "--login", "--pin", info.pin, "--keypairgen", "--key-type", "EC:prime256v1",
                "--id", "10", "--label", "ksk")
        data = tmp_path / "data"
        data.write_bytes(DATA)
        sig = p11tool_sign(info, "10", "ECDSA", data, tmp_path / "raw.sig")  # raw: the data is the "hash"
        pub = _pubkey(vc, "10", tmp_path)
        half = len(sig) // 2
        der = utils.encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
        pub.verify(der, DATA[:32], ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        wrong = p11tool(info, "--login", "--pin", "000000", "-O", check=False)
        assert wrong.returncode != 0 and "CKR_PIN_INCORRECT" in wrong.stdout + wrong.stderr
        assert vc.harness and schsm.HSMState(vc.state_dir).counters.pin_tries_left == 2
    finally:
        vc.stop()


def test_dkek_clones_a_key_onto_a_second_card(card_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The ceremony's clone: one DKEK share on two cards, a key generated on the first, wrapped
    out with sc-hsm-tool, unwrapped into the second, which then signs for the first's public key.

    The share goes in as a raw IMPORT DKEK SHARE: ``sc-hsm-tool --import-dkek-share`` decrypts its
    password file with 10 million key-derivation rounds (~15 s per call here), which proves nothing
    more about the card."""
    cards = [card_factory(kind="virtual-schsm"), card_factory(kind="virtual-schsm")]
    share = bytes(range(32))
    try:
        for vc in cards:
            env = vc.isolated_env()
            subprocess.run(["sc-hsm-tool", "--initialize", "--so-pin", schsm.DEFAULT_SO_PIN, "--pin", "123456",
                            "--dkek-shares", "1", "--label", "clone"], env=env, check=True, capture_output=True,
                           timeout=60)
            apdus = ["00A404000B" + schsm.AID.hex(), "8052000020" + share.hex()]
            out = subprocess.run(["opensc-tool", *[a for x in apdus for a in ("-s", x)]], env=env, check=True,
                                 capture_output=True, text=True, timeout=60).stdout
            assert "SW1=0x90, SW2=0x00" in out.split("Sending:")[-1], out
            status = subprocess.run(["sc-hsm-tool"], env=env, check=True, capture_output=True, text=True,
                                    timeout=60).stdout
            assert "DKEK shares          : 1" in status and "outstanding" not in status.lower()
        original, clone = cards
        orig_env = {**original.isolated_env()}
        subprocess.run(["pkcs11-tool", "--module", original.info.module, "--login", "--pin", "123456",
                        "--keypairgen", "--key-type", "EC:prime256v1", "--id", "01", "--label", "ksk"],
                       env=orig_env, check=True, capture_output=True, timeout=60)
        blob = tmp_path / "ksk.wrapped"
        subprocess.run(["sc-hsm-tool", "--wrap-key", str(blob), "--key-reference", "1", "--pin", "123456"],
                       env=orig_env, check=True, capture_output=True, timeout=60)
        assert schsm.HSMState(original.state_dir).get_key(1) is not None
        assert schsm.HSMState(clone.state_dir).get_key(1) is None
        r = subprocess.run(["sc-hsm-tool", "--unwrap-key", str(blob), "--key-reference", "1", "--pin", "123456"],
                           env=clone.isolated_env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Key successfully imported" in r.stdout, r.stdout + r.stderr
        data = tmp_path / "data"
        data.write_bytes(DATA)
        sig_file = tmp_path / "clone.sig"
        subprocess.run(["pkcs11-tool", "--module", clone.info.module, "--login", "--pin", "123456", "--sign",
                        "-m", "ECDSA-SHA256", "--id", "01", "-i", str(data), "-o", str(sig_file)],
                       env=clone.isolated_env(), check=True, capture_output=True, timeout=60)
        pub_file = tmp_path / "orig.pub"
        subprocess.run(["pkcs11-tool", "--module", original.info.module, "--read-object", "--type", "pubkey",
                        "--id", "01", "-o", str(pub_file)], env=orig_env, check=True, capture_output=True, timeout=60)
        pub = serialization.load_der_public_key(pub_file.read_bytes())
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        verify_ecdsa_raw(pub, sig_file.read_bytes(), DATA)
        # a card with another DKEK refuses the blob
        other = schsm.SmartCardHSM(schsm.HSMState(clone.state_dir), get_profile("fast", family="sc-hsm"))
        other.state.counters.dkek = bytes(32).hex()
        assert other.process(b"\x00\x20\x00\x81\x06123456")[-2:] == b"\x90\x00"
        ((outer_tag, content),) = parse_tlv(blob.read_bytes())  # SEQUENCE { OCTET STRING blob, PRKD, request }
        inner_tag, key_blob = next(parse_tlv(content))
        assert (outer_tag, inner_tag) == (0x30, 0x04)
        assert other.process(_apdu(0x80, 0x74, 9, 0x93, key_blob))[-2:] == b"\x6a\x80"
    finally:
        for vc in cards:
            vc.stop()


def test_unwrap_takes_the_blob_from_the_transfer_ef(hsm: schsm.SmartCardHSM) -> None:
    """OpenSC 0.26's driver writes the wrapped key to EF 2F10 and sends UNWRAP KEY without data
    (0.23 sends it in the APDU); the transfer EF is used once and a shorter blob replaces a longer one."""
    assert _verify(hsm, b"123456") == b"\x90\x00"
    assert hsm.process(_apdu(0x80, 0x50, 0, 0, tlv(0x80, b"\x00\x01") + tlv(0x81, b"123456") + tlv(0x82, SO)
                             + tlv(0x92, b"\x01")))[-2:] == b"\x90\x00"
    assert _verify(hsm, b"123456") == b"\x90\x00"
    assert hsm.process(b"\x80\x52\x00\x00\x20" + bytes(range(32)))[-2:] == b"\x90\x00"
    key = ec.generate_private_key(ec.SECP256R1())
    blob = schsm._wrap(bytes(range(32)), key)

    def transfer(data: bytes) -> bytes:
        body = tlv(0x54, b"\x00\x00") + tlv(0x53, data)
        return hsm.process(_apdu(0x00, 0xD7, 0x2F, 0x10, body))[-2:]

    assert transfer(b"\xff" * (len(blob) + 40)) == b"\x90\x00"  # an earlier, longer transfer
    assert transfer(blob) == b"\x90\x00"
    assert hsm.process(_apdu(0x80, 0x74, 5, 0x93))[-2:] == b"\x90\x00"
    got = hsm.state.get_key(5)
    assert isinstance(got, ec.EllipticCurvePrivateKey)
    assert got.private_numbers() == key.private_numbers()
    assert hsm.state.get_file(schsm.FID_TRANSFER) is None
    assert hsm.process(_apdu(0x80, 0x74, 6, 0x93))[-2:] == b"\x6a\x80"  # nothing left to unwrap


def test_command_chaining_joins_the_parts(hsm: schsm.SmartCardHSM) -> None:
    assert _verify(hsm, b"123456") == b"\x90\x00"
    data = tlv(0x54, b"\x00\x00") + tlv(0x53, b"A" * 300)
    first, rest = data[:200], data[200:]
    assert hsm.process(bytes([0x10, 0xD7, 0xCF, 0x02, len(first)]) + first) == b"\x90\x00"
    assert hsm.process(bytes([0x00, 0xD7, 0xCF, 0x02, len(rest)]) + rest) == b"\x90\x00"
    assert hsm.state.get_file(0xCF02) == b"A" * 300
