"""The pool layer alone over two fake modules (two copies of fake_p11.c, so two cards).

The fake "signs" by echoing its input: a signature that never verifies.  So these tests prove the
sacred rule (a member's signature reaches the consumer only after it verified) and the routing and
refusals around it; signing that succeeds, failover to a good card, pulls and hangs are proven on
virtual cards in tests/pool.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from unit_stack import FFI, add_ec_private_key

from shim import cabi
from shim.call import Call
from shim.config import PoolConfig, PoolMember
from shim.constants import CKM, CKR, CKU, MechanismFlag, SessionFlag
from shim.errors import PKCS11Error
from shim.functions import FUNCTIONS
from shim.layers.pool import POOL_SLOT, Pool
from shim.soft.verify import wrap_octet_string


def _point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return wrap_octet_string(key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


@pytest.fixture
def cards(fake_module: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two fake cards, each its own module file (its own globals), with ECDSA."""
    out = {}
    for name in ("a", "b"):
        path = tmp_path / f"fake-{name}.so"
        shutil.copyfile(fake_module, path)
        ctl = FFI.dlopen(str(path))
        ctl.fake_reset()
        ctl.fake_add_mechanism(CKM.ECDSA, 256, 256, MechanismFlag.SIGN | MechanismFlag.HW)
        out[name] = (str(path), ctl)
    yield out
    for _, ctl in out.values():
        ctl.fake_reset()


class Recorder:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __call__(self, kind: str, **fields: Any) -> None:
        self.records.append({"kind": kind, **fields})

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r["args"] for r in self.records if r["args"].get("pool") == event]


def _pool(cards: dict[str, Any], rec: Recorder) -> tuple[Pool, dict[str, Any]]:
    conf = PoolConfig(members=tuple(PoolMember(name=n, label="fake token", module=cards[n][0]) for n in cards),
                      timeout_s=5.0, separate_modules=False)
    below = {f.name: _unsupported for f in FUNCTIONS}  # no shared module: every member names its own
    pool = Pool(below, conf, default_module=lambda: None, record=rec)
    return pool, pool.table()


def _unsupported(*_: Any) -> int:
    return CKR.FUNCTION_NOT_SUPPORTED


def _session(t: dict[str, Any]) -> int:
    h = FFI.new("CK_SESSION_HANDLE *")
    assert t["C_OpenSession"](Call("C_OpenSession"), POOL_SLOT, SessionFlag.SERIAL_SESSION, cabi.NULL, cabi.NULL,
                              h) == CKR.OK
    return int(h[0])


def _key(t: dict[str, Any], h: int) -> int:
    tmpl = FFI.new("CK_ATTRIBUTE[]", 0)
    assert t["C_FindObjectsInit"](Call("C_FindObjectsInit"), h, tmpl, 0) == CKR.OK
    out, n = FFI.new("CK_OBJECT_HANDLE[]", 8), FFI.new("CK_ULONG *")
    assert t["C_FindObjects"](Call("C_FindObjects"), h, out, 8, n) == CKR.OK
    assert t["C_FindObjectsFinal"](Call("C_FindObjectsFinal"), h) == CKR.OK
    assert n[0] == 1
    return int(out[0])


def test_a_signature_that_does_not_verify_never_reaches_the_consumer(cards: dict[str, Any]) -> None:
    point = _point()
    for _, ctl in cards.values():
        add_ec_private_key(ctl, point)
    rec = Recorder()
    pool, t = _pool(cards, rec)
    assert pool.initialize(Call("C_Initialize"), cabi.NULL) == CKR.OK
    h = _session(t)
    key = _key(t, h)
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    call = Call("C_SignInit")
    assert t["C_SignInit"](call, h, mech, key) == CKR.OK
    data = FFI.new("CK_BYTE[]", bytes(range(32)))
    sig, n = FFI.new("CK_BYTE[]", 64), FFI.new("CK_ULONG *", 64)
    call = Call("C_Sign")
    with pytest.raises(PKCS11Error) as e:
        t["C_Sign"](call, h, data, 32, sig, n)
    assert e.value.rv == CKR.DEVICE_REMOVED
    assert bytes(FFI.buffer(sig, 64)) == bytes(64)  # the echoed "signature" was not handed out
    assert {b["member"] for b in rec.events("bad_signature")} == {"a", "b"}
    assert [f["member"] for f in call.args["failover"]] == [call.args["failover"][0]["member"], "b" if
                                                            call.args["failover"][0]["member"] == "a" else "a"]
    assert all(f["why"] == "bad signature" for f in call.args["failover"])
    pool.finalize(Call("C_Finalize"), cabi.NULL)


def test_a_member_answering_device_error_is_failed_over_and_left(cards: dict[str, Any]) -> None:
    point = _point()
    for _, ctl in cards.values():
        add_ec_private_key(ctl, point)
    cards["a"][1].fake_force(b"C_SignInit", CKR.DEVICE_ERROR)
    rec = Recorder()
    pool, t = _pool(cards, rec)
    assert pool.initialize(Call("C_Initialize"), cabi.NULL) == CKR.OK
    h = _session(t)
    key = _key(t, h)
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    for _ in range(2):  # whichever the round robin tries first, "a" fails and "b" takes the operation
        call = Call("C_SignInit")
        assert t["C_SignInit"](call, h, mech, key) == CKR.OK
        assert call.args["member"] == "b"
        pool._end_sign(pool.sessions[h])
    assert [e["member"] for e in rec.events("leave")] == ["a"]
    pool.finalize(Call("C_Finalize"), cabi.NULL)


def test_one_cka_id_with_two_public_keys_refuses_to_start(cards: dict[str, Any]) -> None:
    add_ec_private_key(cards["a"][1], _point())
    add_ec_private_key(cards["b"][1], _point())
    pool, _ = _pool(cards, Recorder())
    with pytest.raises(PKCS11Error) as e:
        pool.initialize(Call("C_Initialize"), cabi.NULL)
    assert e.value.rv == CKR.GENERAL_ERROR
    assert "pool refused to start" in (e.value.detail or "") and "CKA_ID 01" in (e.value.detail or "")


def test_a_key_on_one_member_is_reported_and_served_by_that_member_only(cards: dict[str, Any]) -> None:
    add_ec_private_key(cards["a"][1], _point())
    add_ec_private_key(cards["a"][1], _point(), kid=b"\x02")
    add_ec_private_key(cards["b"][1], _point(), kid=b"\x02")
    rec = Recorder()
    pool, t = _pool(cards, rec)
    with pytest.raises(PKCS11Error):  # CKA_ID 02 differs; fix b to hold the same 02 as a
        pool.initialize(Call("C_Initialize"), cabi.NULL)
    cards["b"][1].fake_reset()
    cards["b"][1].fake_add_mechanism(CKM.ECDSA, 256, 256, MechanismFlag.SIGN | MechanismFlag.HW)
    rec = Recorder()
    pool, t = _pool(cards, rec)
    assert pool.initialize(Call("C_Initialize"), cabi.NULL) == CKR.OK
    partial = rec.events("partial_keys")
    assert partial and {k["id"]: k["on"] for k in partial[0]["keys"]} == {"01": ["a"], "02": ["a"]}
    assert pool.key_report()["private_keys"] == {"01": ["a"], "02": ["a"]}
    h = _session(t)
    tmpl = FFI.new("CK_ATTRIBUTE[]", 0)
    assert t["C_FindObjectsInit"](Call("C_FindObjectsInit"), h, tmpl, 0) == CKR.OK
    out, n = FFI.new("CK_OBJECT_HANDLE[]", 8), FFI.new("CK_ULONG *")
    t["C_FindObjects"](Call("C_FindObjects"), h, out, 8, n)
    mech = FFI.new("CK_MECHANISM *", {"mechanism": CKM.ECDSA})
    for i in range(int(n[0])):
        call = Call("C_SignInit")
        assert t["C_SignInit"](call, h, mech, out[i]) == CKR.OK
        assert call.args["member"] == "a"
        pool._end_sign(pool.sessions[h])
    pool.finalize(Call("C_Finalize"), cabi.NULL)


def test_login_stops_at_a_wrong_consumer_pin(cards: dict[str, Any]) -> None:
    for _, ctl in cards.values():
        ctl.fake_force(b"C_Login", CKR.PIN_INCORRECT)
    pool, t = _pool(cards, Recorder())
    assert pool.initialize(Call("C_Initialize"), cabi.NULL) == CKR.OK
    h = _session(t)
    pin = FFI.new("CK_UTF8CHAR[]", b"0000")
    call = Call("C_Login")
    assert t["C_Login"](call, h, CKU.USER, pin, 4) == CKR.PIN_INCORRECT
    assert len(call.args["pool"]) == 1  # the second card's PIN counter was left alone
    pool.finalize(Call("C_Finalize"), cabi.NULL)
