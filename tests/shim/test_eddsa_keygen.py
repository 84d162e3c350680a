"""Ed25519 key generation asked for with CKM_EDDSA (GnuTLS, so Knot DNS's keymgr).

The token refuses CKM_EDDSA for C_GenerateKeyPair (it is a signing mechanism);
through the shim, ``[compat] eddsa_keygen_alias`` (default on) asks the token for
CKM_EC_EDWARDS_KEY_PAIR_GEN instead, and the record says so.
"""

from __future__ import annotations

import json

import pytest

GENERATE = """
import json, os, PyKCS11
lib = PyKCS11.PyKCS11Lib(); lib.load(MODULE)
slot = lib.getSlotList(tokenPresent=True)[0]
s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION); s.login(PIN)
ed25519 = bytes.fromhex("06032b6570")  # DER OID 1.3.101.112
pub = [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_TOKEN, False),
       (PyKCS11.CKA_EC_PARAMS, ed25519), (PyKCS11.CKA_VERIFY, True), (PyKCS11.CKA_LABEL, "ed-alias")]
priv = [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_TOKEN, False),
        (PyKCS11.CKA_SIGN, True), (PyKCS11.CKA_LABEL, "ed-alias")]
try:
    hpub, hpriv = s.generateKeyPair(pub, priv, mecha=PyKCS11.Mechanism(0x1057, None))  # CKM_EDDSA
    out = {"rv": "CKR_OK", "point": bytes(s.getAttributeValue(hpub, [PyKCS11.CKA_EC_POINT])[0]).hex()}
    try:
        out["sig"] = bytes(s.sign(hpriv, b"example.test. DNSKEY", PyKCS11.Mechanism(0x1057, None))).hex()
    except PyKCS11.PyKCS11Error as e:
        out["sign_rv"] = PyKCS11.CKR[e.value]
    print(json.dumps(out))
except PyKCS11.PyKCS11Error as e:
    out = {"rv": PyKCS11.CKR[e.value]}
    try:  # can the token make Ed25519 keys at all, asked the standard way?
        s.generateKeyPair(pub, priv, mecha=PyKCS11.Mechanism(0x1055, None))  # CKM_EC_EDWARDS_KEY_PAIR_GEN
        out["standard_rv"] = "CKR_OK"
    except PyKCS11.PyKCS11Error as e2:
        out["standard_rv"] = PyKCS11.CKR[e2.value]
    print(json.dumps(out))
"""


def _generate(shim_env, **kw):
    return json.loads(shim_env.run_python(GENERATE, **kw).stdout)


def _verify_ed25519(point_hex: str, sig_hex: str) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    point = bytes.fromhex(point_hex)
    raw = point[2:] if len(point) == 34 and point[0] == 0x04 else point  # DER OCTET STRING or raw
    Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(sig_hex), b"example.test. DNSKEY")


def test_ckm_eddsa_key_generation_is_mapped_and_the_key_signs(shim_env):
    if not shim_env.card.can_generate:
        pytest.skip(f"{shim_env.card.kind} cannot generate keys through PKCS#11 (documented)")
    direct = _generate(shim_env, direct=True)
    assert direct["rv"] == "CKR_MECHANISM_INVALID", f"the token itself takes CKM_EDDSA now: {direct}"
    if direct["standard_rv"] != "CKR_OK":
        pytest.skip(f"{shim_env.card.kind} makes no Ed25519 keys at all ({direct['standard_rv']})")
    got = _generate(shim_env)
    assert got["rv"] == "CKR_OK", got
    if "sig" in got:
        _verify_ed25519(got["point"], got["sig"])
    else:  # a card-like token is masked to the mechanisms cards have: no EdDSA signing there
        assert shim_env.card.kind != "softhsm" and got["sign_rv"] == "CKR_MECHANISM_INVALID", got
    gens = shim_env.calls("C_GenerateKeyPair")
    assert [c["rv"] for c in gens] == ["CKR_OK"]
    assert gens[0]["args"]["mechanism_mapped"] == "CKM_EDDSA -> CKM_EC_EDWARDS_KEY_PAIR_GEN"


def test_without_the_alias_the_token_answer_passes_through(shim_env, tmp_path):
    if shim_env.card.kind != "softhsm":
        pytest.skip("one card is enough: the setting only decides whether the mechanism is rewritten")
    conf = tmp_path / "no-alias.toml"
    conf.write_text("[compat]\neddsa_keygen_alias = false\n")
    got = _generate(shim_env, extra_env={"SC4DNSSEC_CONF": str(conf)})
    assert got["rv"] == "CKR_MECHANISM_INVALID", got
    gens = shim_env.calls("C_GenerateKeyPair")
    assert gens and "mechanism_mapped" not in gens[-1]["args"]
