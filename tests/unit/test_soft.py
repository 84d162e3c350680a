"""shim/soft/ in-process: the attribute codecs, sessions, operations, capabilities, mechanisms."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from unit_stack import FFI

from shim import attributes
from shim.constants import CKA, CKK, CKM, CKO, CKR, MechanismFlag
from shim.errors import PKCS11Error
from shim.soft.capabilities import Capabilities
from shim.soft.digest import Digest
from shim.soft.hashsign import HashThenSign
from shim.soft.hmac import Hmac
from shim.soft.mechanisms import listed, mechanism_table
from shim.soft.operations import CardOperation, Operation
from shim.soft.sessions import SessionTable
from shim.soft.verify import Verifier, public_key


def test_the_one_ulong_decoder_refuses_values_of_no_integer_size() -> None:
    assert attributes.ulong(attributes.encode_ulong(CKO.PUBLIC_KEY)) == CKO.PUBLIC_KEY
    assert attributes.ulong(b"\x03") == 3
    assert attributes.ulong(b"\x00\x00\x00") is None and attributes.ulong(None) is None


def test_summaries_show_only_what_the_codec_table_allows() -> None:
    s = attributes.summarise
    assert s(CKA.CLASS, attributes.encode_ulong(CKO.PRIVATE_KEY)) == ("CKA_CLASS", "CKO_PRIVATE_KEY")
    assert s(CKA.KEY_TYPE, attributes.encode_ulong(CKK.EC)) == ("CKA_KEY_TYPE", "CKK_EC")
    assert s(CKA.LABEL, b"KSK") == ("CKA_LABEL", "KSK")
    assert s(CKA.SIGN, b"\x01") == ("CKA_SIGN", True)
    assert s(CKA.SIGN, b"\x01\x00") == ("CKA_SIGN", "<2 bytes>")
    assert s(CKA.VALUE, b"secret!") == ("CKA_VALUE", "<7 bytes>")
    assert s(CKA.PRIVATE_EXPONENT, b"\x01" * 9) == ("CKA_PRIVATE_EXPONENT", "<9 bytes>")
    assert s(0x80001234, b"xy") == ("CKA_0x80001234", "<2 bytes>")
    assert s(CKA.ID, None) == ("CKA_ID", None)


def test_key_material_is_secret_in_the_table() -> None:
    assert {CKA.VALUE, CKA.PRIVATE_EXPONENT, CKA.PRIME_1, CKA.PRIME_2} <= attributes.SECRET
    assert CKA.LABEL not in attributes.SECRET and CKA.EC_POINT not in attributes.SECRET


def test_session_table_opens_closes_and_closes_a_slot() -> None:
    t = SessionTable()
    t.open(1, slot=7)
    t.open(2, slot=7)
    t.open(3, slot=8)
    assert t.slot_of(1) == 7 and t.slot_of(9) is None
    t.close(1)
    assert t.get(1) is None and len(t) == 2
    t.close_slot(7)
    assert t.get(2) is None and t.get(3) is not None
    s = t.open(3, slot=8)  # a reused handle starts afresh
    assert s.sign is None and t.get(3) is s


def test_every_operation_speaks_the_one_protocol() -> None:
    ops: list[Operation] = [Digest(CKM.SHA256), Hmac(CKM.SHA256_HMAC, b"k"), HashThenSign(CKM.ECDSA_SHA256, b""),
                            CardOperation(CKM.AES_CMAC)]
    assert [op.on_card for op in ops] == [False, False, False, True]
    for op in ops[:3]:
        op.update(b"data")
    with pytest.raises(PKCS11Error):
        ops[3].update(b"data")


def test_hash_then_sign_gives_the_card_a_digestinfo_for_rsa_and_a_bare_hash_for_ecdsa() -> None:
    rsa = HashThenSign(CKM.SHA256_RSA_PKCS, b"")
    ecdsa = HashThenSign(CKM.ECDSA_SHA256, b"")
    for op in (rsa, ecdsa):
        op.update(b"abc")
    digest = hashlib.sha256(b"abc").digest()
    assert ecdsa.to_sign() == digest
    assert rsa.to_sign() == bytes.fromhex("3031300d060960864801650304020105000420") + digest


def test_digest_state_round_trips_and_foreign_state_is_refused() -> None:
    d = Digest(CKM.SHA256)
    d.update(b"abc")
    again = Digest.from_state(d.state())
    again.update(b"d")
    assert again.peek() == hashlib.sha256(b"abcd").digest()
    with pytest.raises(PKCS11Error) as e:
        Digest.from_state(b"not ours")
    assert e.value.rv == CKR.SAVED_STATE_INVALID


def test_verifier_refuses_a_key_of_another_type() -> None:
    rsa_attrs = {CKA.KEY_TYPE: attributes.encode_ulong(CKK.RSA), CKA.MODULUS: (2**1023 + 1).to_bytes(128, "big"),
                 CKA.PUBLIC_EXPONENT: b"\x01\x00\x01"}
    with pytest.raises(PKCS11Error) as e:
        Verifier(CKM.ECDSA, b"", public_key(rsa_attrs))
    assert e.value.rv == CKR.KEY_TYPE_INCONSISTENT


class _Card:
    """A card that lists CKM_ECDSA (sign) and CKM_RSA_PKCS (sign), counting mechanism probes."""

    def __init__(self) -> None:
        self.probes = 0
        self.mechs = {CKM.ECDSA: (256, 384, MechanismFlag.SIGN | MechanismFlag.HW),
                      CKM.RSA_PKCS: (2048, 4096, MechanismFlag.SIGN)}

    def fns(self) -> dict[str, Any]:
        return {"C_GetMechanismList": self.get_list, "C_GetMechanismInfo": self.get_info}

    def get_list(self, slot: int, arr: Any, count: Any) -> int:
        self.probes += 1
        if arr != FFI.NULL:
            for i, m in enumerate(self.mechs):
                arr[i] = m
        count[0] = len(self.mechs)
        return CKR.OK

    def get_info(self, slot: int, m: int, info: Any) -> int:
        info.ulMinKeySize, info.ulMaxKeySize, info.flags = self.mechs[m]
        return CKR.OK


def test_capabilities_are_probed_once_per_slot_and_masks_apply() -> None:
    card = _Card()
    caps = Capabilities(card.fns(), frozenset({"C_Verify"}), frozenset({CKM.RSA_PKCS}))
    assert set(caps.mechanisms(1)) == {CKM.ECDSA}
    assert caps.card_can(1, CKM.ECDSA, MechanismFlag.SIGN)
    caps.mechanisms(1)
    assert card.probes == 2  # one size query and one list, once
    assert caps.lacks("C_Verify") and not caps.lacks("C_Sign")
    caps.remember_missing("C_Sign")
    assert caps.lacks("C_Sign")
    caps.forget()
    caps.mechanisms(1)
    assert card.probes == 4


def test_the_mechanism_table_completes_and_lists_without_unlisted_software_ecdsa() -> None:
    caps = Capabilities(_Card().fns(), frozenset(), frozenset())
    table = mechanism_table(caps, 1, advertise_keygen=False)
    assert table[CKM.ECDSA_SHA256].flags & MechanismFlag.SIGN
    assert table[CKM.SHA256_RSA_PKCS].min_key == 2048
    assert table[CKM.SHA256].flags == MechanismFlag.DIGEST
    assert CKM.EC_KEY_PAIR_GEN not in table
    assert CKM.EC_KEY_PAIR_GEN in mechanism_table(caps, 1, advertise_keygen=True)
    names = listed(caps, 1, advertise_keygen=False)
    assert CKM.SHA256_RSA_PKCS in names and CKM.ECDSA_SHA256 not in names
