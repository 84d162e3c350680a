"""BIND 9.16 native's exact call pattern through the shim on whatever card
``--card`` names: the virtual PIV card (OpenSC: no session public keys, no
keygen mechanisms), SoftHSM masked to a card, or full SoftHSM.  The facts
file consumers-bind.md lists the sequence; every signature is checked with
``cryptography`` in the client."""

from __future__ import annotations

import json
import sys

import pytest

from sc4testkit.quirks import behaviour
from sc4testkit.tokens import TOKENS

BIND916_CYCLE = """
import hashlib, json, PyKCS11
from PyKCS11 import LowLevel as LL
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
lib = PyKCS11.PyKCS11Lib(); lib.load(MODULE)
slot = lib.getSlotList(tokenPresent=True)[0]
res = {}
# start-up admission: first slot, EC keygen + ECDSA sign|verify
gen = lib.getMechanismInfo(slot, "CKM_EC_KEY_PAIR_GEN")
ecdsa = lib.getMechanismInfo(slot, "CKM_ECDSA")
res["admitted"] = ("CKF_GENERATE_KEY_PAIR" in gen.flags2text() and
                   {"CKF_SIGN", "CKF_VERIFY"} <= set(ecdsa.flags2text()))
s = lib.openSession(slot)
s.login(PIN)
label = os.environ["EC_LABEL"]
# keyfromlabel: the public key by the private key's label, then the private key
pubs = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
                      (PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_LABEL, label)])
privs = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
                       (PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_LABEL, label)])
res["found"] = [len(pubs), len(privs)]
params, point = [bytes(v) for v in s.getAttributeValue(pubs[0], [PyKCS11.CKA_EC_PARAMS, PyKCS11.CKA_EC_POINT])]
key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point[2:])
ok = 0
for i in range(5):
    rrset = (b"example. 3600 IN A 192.0.2.%d " % i) * (1 + i * 7)
    # signzone: SHA-256 through the token, raw ECDSA on the card
    dig = s.digestSession(PyKCS11.Mechanism(PyKCS11.CKM_SHA256))
    for part in (rrset[:10], rrset[10:]):
        dig.update(part)
    digest = bytes(dig.final())
    assert digest == hashlib.sha256(rrset).digest()
    sig = bytes(s.sign(privs[0], digest, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)))
    key.verify(utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
               digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    # self-check: a session public key from BIND's exact template, C_Verify, destroy
    tmp = s.createObject([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
                          (PyKCS11.CKA_TOKEN, False), (PyKCS11.CKA_PRIVATE, False), (PyKCS11.CKA_VERIFY, True),
                          (PyKCS11.CKA_EC_PARAMS, params), (PyKCS11.CKA_EC_POINT, point)])
    assert s.verify(tmp, digest, sig, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert not s.verify(tmp, digest, bad, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))
    s.destroyObject(tmp)
    ok += 1
res["cycles"] = ok
print(json.dumps(res))
"""


def test_bind916_sign_and_self_check_cycle(shim_env):
    env = {"EC_LABEL": shim_env.card.keys["ec"].label}
    res = json.loads(shim_env.run_python(BIND916_CYCLE, extra_env=env).stdout)
    assert res == {"admitted": True, "found": [1, 1], "cycles": 5}
    calls = shim_env.calls()
    signs = [c for c in calls if c["fn"] == "C_Sign" and c["src"] == "card"]
    verifies = [c for c in calls if c["fn"] == "C_Verify"]
    creates = [c for c in calls if c["fn"] == "C_CreateObject"]
    assert len(signs) == 5
    assert [c["rv"] for c in verifies] == ["CKR_OK", "CKR_SIGNATURE_INVALID"] * 5
    assert {c["src"] for c in verifies} == {"soft"}
    assert {c["rv"] for c in creates} == {"CKR_OK"}
    out = shim_env.run([sys.executable, "-m", "shim.cli", "audit", "verify", str(shim_env.audit_log)], check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bind916_admission_fails_without_the_shim_on_a_card(shim_env):
    """The reason the project exists: directly, the card is refused (no
    keygen mechanism on PIV, session public keys refused by OpenSC)."""
    if TOKENS[shim_env.card.kind].source == "softhsm":
        pytest.skip("SoftHSM (even with the shim-side mask) serves this directly: nothing to show")
    proc = shim_env.run_python(BIND916_CYCLE, direct=True, check=False,
                               extra_env={"EC_LABEL": shim_env.card.keys["ec"].label})
    refused = proc.returncode != 0 or json.loads(proc.stdout)["admitted"] is False
    assert refused, proc.stdout


ONE_PUBLIC_KEY_PER_ID = """
import json, PyKCS11
lib = PyKCS11.PyKCS11Lib(); lib.load(MODULE)
s = lib.openSession(lib.getSlotList(tokenPresent=True)[0]); s.login(PIN)
label = lambda o: s.getAttributeValue(o, [PyKCS11.CKA_LABEL])[0]
out = {}
for kid in os.environ["KEY_IDS"].split():
    find = lambda cls: s.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_ID, bytes.fromhex(kid))])
    pubs, privs = find(PyKCS11.CKO_PUBLIC_KEY), find(PyKCS11.CKO_PRIVATE_KEY)
    out[kid] = {"public": [label(o) for o in pubs], "private": [label(o) for o in privs]}
print(json.dumps(out))
"""


def test_lookup_by_id_or_label_finds_one_matching_public_key(shim_env):
    """BIND 9.16/libp11 find the public key by the private key's label, BIND
    9.20/Knot/OpenDNSSEC by CKA_ID: both must find exactly one public key,
    labelled like its private key (PIV cards label them differently)."""
    ids = " ".join(k.id.hex() for k in shim_env.card.keys.values())
    res = json.loads(shim_env.run_python(ONE_PUBLIC_KEY_PER_ID, extra_env={"KEY_IDS": ids}).stdout)
    for kid, found in res.items():
        assert len(found["private"]) == 1, (kid, found)
        assert found["public"] == found["private"], (kid, found)


VERIFY_WITHOUT_INIT = """
import json, PyKCS11
from PyKCS11 import LowLevel as LL
lib = PyKCS11.PyKCS11Lib(); lib.load(MODULE)
s = lib.openSession(lib.getSlotList(tokenPresent=True)[0]); s.login(PIN)
kid = bytes.fromhex(os.environ["KEY_ID"])
key = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_ID, kid)])[0]
digestinfo = bytes.fromhex("3031300d060960864801650304020105000420") + bytes(32)
s.sign(key, digestinfo, PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS))
low = s.lib
out = {"C_VerifyUpdate": low.C_VerifyUpdate(s.session, LL.ckbytelist(b"x" * 40)),
       "C_Verify": low.C_Verify(s.session, LL.ckbytelist(b"x" * 32), LL.ckbytelist(bytes(256))),
       "C_VerifyFinal": low.C_VerifyFinal(s.session, LL.ckbytelist(bytes(256)))}
s.logout(); s.closeSession()
print(json.dumps(out))
"""


def test_verify_without_init_is_answered_by_the_shim(shim_env):
    """After a signature, the verify calls without C_VerifyInit get CKR_OPERATION_NOT_INITIALIZED
    from the shim on every card; directly, libykcs11 dies on them (``verify_without_init`` in
    sc4testkit/quirks.py), which this also checks while that module is the backend."""
    env = {"KEY_ID": shim_env.card.keys["rsa"].id.hex()}
    res = json.loads(shim_env.run_python(VERIFY_WITHOUT_INIT, extra_env=env).stdout)
    assert res == {fn: 0x91 for fn in ("C_VerifyUpdate", "C_Verify", "C_VerifyFinal")}
    if behaviour("verify_without_init", TOKENS[shim_env.card.kind].module):
        direct = shim_env.run_python(VERIFY_WITHOUT_INIT, direct=True, check=False, extra_env=env)
        assert direct.returncode < 0, (direct.returncode, direct.stdout, direct.stderr[-500:])
