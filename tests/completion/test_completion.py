"""Every supplement over the masked SoftHSM, through the real module; results
checked independently with ``cryptography`` / ``hashlib``."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from completion_client import CLIENT
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from shim.constants import CKM, CKR, MechanismFlag

F = MechanismFlag


def _rs_to_der(sig: bytes) -> bytes:
    n = len(sig) // 2
    return utils.encode_dss_signature(int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big"))


def test_bind916_admission_mechanism_info(shim):
    res = shim.run_python(CLIENT + """
info = {}
for m in (0x1040, 0x1041, 0x0, 0x1, 0x5, 0x6, 0x40, 0x42, 0x250, 0x1044):
    i = PyKCS11.LowLevel.CK_MECHANISM_INFO()
    assert lib.lib.C_GetMechanismInfo(slot, m, i) == 0
    info[str(m)] = i.flags
out(info=info)
""")
    info = {int(k): v for k, v in res["info"].items()}
    assert info[CKM.EC_KEY_PAIR_GEN] & F.GENERATE_KEY_PAIR
    assert info[CKM.ECDSA] & F.SIGN and info[CKM.ECDSA] & F.VERIFY
    assert info[CKM.RSA_PKCS_KEY_PAIR_GEN] & F.GENERATE_KEY_PAIR
    for m in (CKM.RSA_PKCS, CKM.MD5_RSA_PKCS, CKM.SHA1_RSA_PKCS, CKM.SHA256_RSA_PKCS, CKM.SHA512_RSA_PKCS,
              CKM.ECDSA_SHA256):
        assert info[m] & F.SIGN and info[m] & F.VERIFY, CKM(m).name
    assert info[CKM.SHA256] & F.DIGEST and not info[CKM.SHA256] & F.HW  # software: never CKF_HW
    assert not info[CKM.ECDSA_SHA256] & F.HW


def test_bind916_signzone_ecdsa_cycle(shim):
    """digest -> raw sign -> C_CreateObject(BIND's exact template) -> verify -> destroy."""
    res = shim.run_python(CLIENT + """
priv = key("ec256", CKO_PRIVATE_KEY); pub = key("ec256", CKO_PUBLIC_KEY)
params, point = [bytes(v) for v in s.getAttributeValue(pub, [CKA_EC_PARAMS, CKA_EC_POINT])]
rrset = b"example. 3600 IN A 192.0.2.1" * 5
s.digestSession  # exists
d = s.digestSession(Mechanism(CKM_SHA256))
for i in range(5): d.update(rrset[i * 10:(i + 1) * 10] + rrset[50:])
digest = bytes(d.final())
sig = bytes(s.sign(priv, digest, Mechanism(CKM_ECDSA)))
tmp = s.createObject([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, False), (CKA_PRIVATE, False),
                      (CKA_VERIFY, True), (CKA_EC_PARAMS, params), (CKA_EC_POINT, point)])
ok = s.verify(tmp, digest, sig, Mechanism(CKM_ECDSA))
bad = s.verify(tmp, digest, bytes([sig[0] ^ 1]) + sig[1:], Mechanism(CKM_ECDSA))
short = rv_of(s.verify, tmp, digest, sig[:-1], Mechanism(CKM_ECDSA))
s.destroyObject(tmp)
stale = rv_of(s.getAttributeValue, tmp, [CKA_CLASS])
out(ok=ok, bad=bad, short=short, stale=stale, digest=digest.hex(), sig=sig.hex(), handle=h(tmp), point=point.hex())
""")
    rrset = b"example. 3600 IN A 192.0.2.1" * 5
    expect = hashlib.sha256(b"".join(rrset[i * 10:(i + 1) * 10] + rrset[50:] for i in range(5))).digest()
    assert bytes.fromhex(res["digest"]) == expect
    shim.keys.ec256.public_key().verify(_rs_to_der(bytes.fromhex(res["sig"])), expect,
                                        ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert res["ok"] and res["bad"] is False and res["short"] == CKR.SIGNATURE_LEN_RANGE
    assert [c["rv"] for c in shim.calls("C_Verify")] == ["CKR_OK", "CKR_SIGNATURE_INVALID", "CKR_SIGNATURE_LEN_RANGE"]
    assert res["stale"] == CKR.OBJECT_HANDLE_INVALID
    assert 0xE0000000 <= res["handle"] < 1 << 32
    srcs = {c["fn"]: c.get("src") for c in shim.calls()}
    assert srcs["C_Sign"] == "card" and srcs["C_Verify"] == "soft" and srcs["C_DigestFinal"] == "soft"
    assert srcs["C_CreateObject"] == "soft"


@pytest.mark.parametrize("mech,hname", [("CKM_SHA1_RSA_PKCS", "SHA1"), ("CKM_SHA256_RSA_PKCS", "SHA256"),
                                        ("CKM_SHA512_RSA_PKCS", "SHA512")])
def test_bind916_signzone_rsa_multipart_cycle(shim, mech, hname):
    res = shim.run_python(CLIENT + f"""
import PyKCS11.LowLevel as LL
priv = key("rsa2048", CKO_PRIVATE_KEY); pub = key("rsa2048", CKO_PUBLIC_KEY)
n, e = [bytes(v) for v in s.getAttributeValue(pub, [CKA_MODULUS, CKA_PUBLIC_EXPONENT])]
data = b"rrset-wire-format" * 40
sig = bytes(s.sign(priv, data, Mechanism({mech})))  # PyKCS11 single-part
tmp = s.createObject([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_TOKEN, False),
                      (CKA_VERIFY, True), (CKA_MODULUS, n), (CKA_PUBLIC_EXPONENT, e)])
ok = s.verify(tmp, data, sig, Mechanism({mech}))
s.destroyObject(tmp)
# multi-part sign through the low-level API (C_SignInit/Update/Final)
m = LL.CK_MECHANISM(); m.mechanism = {mech}
s.lib.C_SignInit(s.session, m, priv)
for i in range(0, len(data), 100):
    s.lib.C_SignUpdate(s.session, LL.ckbytelist(data[i:i + 100]))
buf = LL.ckbytelist()
rv1 = s.lib.C_SignFinal(s.session, buf)
rv2 = s.lib.C_SignFinal(s.session, buf)
out(ok=ok, sig=sig.hex(), multi=bytes(buf).hex(), rvs=[rv1, rv2])
""")
    data = b"rrset-wire-format" * 40
    h = getattr(hashes, hname)()
    pub = shim.keys.rsa.public_key()
    pub.verify(bytes.fromhex(res["sig"]), data, padding.PKCS1v15(), h)
    assert res["ok"]
    assert res["rvs"][-1] == CKR.OK, res["rvs"]
    pub.verify(bytes.fromhex(res["multi"]), data, padding.PKCS1v15(), h)


@pytest.mark.parametrize("label,hname,mech", [("ec256", "SHA256", "CKM_ECDSA_SHA256"),
                                              ("ec384", "SHA384", "CKM_ECDSA_SHA384"),
                                              ("ec256", "SHA1", "CKM_ECDSA_SHA1")])
def test_hashed_ecdsa_signatures_verify_with_cryptography(shim, label, hname, mech):
    res = shim.run_python(CLIENT + f"""
priv = key("{label}", CKO_PRIVATE_KEY); pub = key("{label}", CKO_PUBLIC_KEY)
sig = bytes(s.sign(priv, b"hello world", Mechanism({mech})))
out(sig=sig.hex(), ok=s.verify(pub, b"hello world", sig, Mechanism({mech})))
""")
    key = shim.keys.ec256 if label == "ec256" else shim.keys.ec384
    key.public_key().verify(_rs_to_der(bytes.fromhex(res["sig"])), b"hello world", ec.ECDSA(getattr(hashes, hname)()))
    assert res["ok"]
    sign = [c for c in shim.calls("C_Sign") if c["rv"] == "CKR_OK" and c.get("src")]
    assert sign and sign[-1]["src"] == "card" and sign[-1]["args"]["hashed_by"] == "soft"


def test_rsa_raw_pkcs_verify_over_digestinfo(shim):
    res = shim.run_python(CLIENT + """
priv = key("rsa2048", CKO_PRIVATE_KEY); pub = key("rsa2048", CKO_PUBLIC_KEY)
import hashlib
di = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(b"x").digest()
sig = bytes(s.sign(priv, di, Mechanism(CKM_RSA_PKCS)))
out(ok=s.verify(pub, di, sig, Mechanism(CKM_RSA_PKCS)),
    bad=s.verify(pub, di[:-1] + b"\\0", sig, Mechanism(CKM_RSA_PKCS)),
    short=rv_of(s.verify, pub, di, sig[1:], Mechanism(CKM_RSA_PKCS)), sig=sig.hex())
""")
    shim.keys.rsa.public_key().verify(bytes.fromhex(res["sig"]), b"x", padding.PKCS1v15(), hashes.SHA256())
    assert res["ok"] and res["bad"] is False and res["short"] == CKR.SIGNATURE_LEN_RANGE


def test_digests_and_operation_state(shim):
    res = shim.run_python(CLIENT + """
import PyKCS11.LowLevel as LL
out_d = {}
for name, m in (("md5", CKM_MD5), ("sha1", CKM_SHA_1), ("sha224", CKM_SHA224), ("sha256", CKM_SHA256),
                ("sha384", CKM_SHA384), ("sha512", CKM_SHA512)):
    out_d[name] = bytes(s.digest(b"abc" * 100, Mechanism(m))).hex()
mech = LL.CK_MECHANISM(); mech.mechanism = CKM_SHA256
s.lib.C_DigestInit(s.session, mech)
s.lib.C_DigestUpdate(s.session, LL.ckbytelist(b"first-half"))
n = U(0)
rv_len = F.C_GetOperationState(h(s.session), None, ctypes.byref(n))
state = ctypes.create_string_buffer(n.value)
rv_state = F.C_GetOperationState(h(s.session), state, ctypes.byref(n))
s2 = lib.openSession(slot, CKF_SERIAL_SESSION)
rv_set = F.C_SetOperationState(h(s2.session), state, n.value, 0, 0)
s2.lib.C_DigestUpdate(s2.session, LL.ckbytelist(b"second-half"))
d = LL.ckbytelist(32)
s2.lib.C_DigestFinal(s2.session, d)
out(d=out_d, resumed=bytes(d).hex(), rvs=[rv_len, rv_state, rv_set])
""")
    for name, hexd in res["d"].items():
        assert hexd == hashlib.new(name, b"abc" * 100).hexdigest(), name
    assert res["rvs"] == [0, 0, 0]
    assert res["resumed"] == hashlib.sha256(b"first-halfsecond-half").hexdigest()


def test_hmac_with_session_secret_key(shim):
    res = shim.run_python(CLIENT + """
k = s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_TOKEN, False),
                    (CKA_VALUE, b"k" * 32), (CKA_SIGN, True), (CKA_VERIFY, True)])
mac = bytes(s.sign(k, b"message", Mechanism(CKM_SHA256_HMAC)))
out(mac=mac.hex(), ok=s.verify(k, b"message", mac, Mechanism(CKM_SHA256_HMAC)),
    bad=s.verify(k, b"messagf", mac, Mechanism(CKM_SHA256_HMAC)))
""")
    assert res["mac"] == hmac.new(b"k" * 32, b"message", "sha256").hexdigest()
    assert res["ok"] and res["bad"] is False


def test_random_and_token_rng_flag(shim):
    res = shim.run_python(CLIENT + """
r = bytes(s.generateRandom(64)); s.seedRandom(b"seed")
ti = lib.getTokenInfo(slot)
out(n=len(r), distinct=len(set(r)), flags=ti.flags, label=ti.label.strip())
""")
    assert res["n"] == 64 and res["distinct"] > 20
    assert res["flags"] & 1 and res["label"] == "completion"
    rec = shim.calls("C_GenerateRandom")[-1]
    assert rec["src"] == "soft" and rec["args"]["card_rng"] is False


def test_derived_public_key_for_card_key_without_one(shim):
    res = shim.run_python(CLIENT + """
pubs = s.findObjects([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_TOKEN, True), (CKA_LABEL, "rsa-nopub")])
assert len(pubs) == 1
pub = pubs[0]
n, kid = [bytes(v) for v in s.getAttributeValue(pub, [CKA_MODULUS, CKA_ID])]
priv = key("rsa-nopub", CKO_PRIVATE_KEY)
sig = bytes(s.sign(priv, b"data", Mechanism(CKM_SHA256_RSA_PKCS)))
out(n=n.hex(), id=kid.hex(), ok=s.verify(pub, b"data", sig, Mechanism(CKM_SHA256_RSA_PKCS)),
    destroy=rv_of(s.destroyObject, pub), all_pubs=len(s.findObjects([(CKA_CLASS, CKO_PUBLIC_KEY)])))
""")
    assert int(res["n"], 16) == shim.keys.rsa_nopub.public_key().public_numbers().n
    assert res["id"] == "04" and res["ok"] and res["destroy"] == CKR.ACTION_PROHIBITED
    assert res["all_pubs"] == 4


def test_objects_copy_find_set_size_and_session_lifetime(shim):
    res = shim.run_python(CLIENT + """
pub = key("ec256", CKO_PUBLIC_KEY)
tmpl = (rawp11.CK_ATTRIBUTE * 2)()
f, lab = ctypes.c_ubyte(0), ctypes.create_string_buffer(b"cached", 6)
tmpl[0].type, tmpl[0].pValue, tmpl[0].ulValueLen = CKA_TOKEN, ctypes.cast(ctypes.byref(f), ctypes.c_void_p), 1
tmpl[1].type, tmpl[1].pValue, tmpl[1].ulValueLen = CKA_LABEL, ctypes.cast(lab, ctypes.c_void_p), 6
newh = U(0)
assert F.C_CopyObject(h(s.session), h(pub), tmpl, 2, ctypes.byref(newh)) == 0
copy = PyKCS11.CK_OBJECT_HANDLE(s); copy.assign(newh.value)
found = s.findObjects([(CKA_LABEL, "cached")])
s.setAttributeValue(copy, [(CKA_LABEL, "renamed")])
label = s.getAttributeValue(copy, [CKA_LABEL])[0]; label = label if isinstance(label, str) else bytes(label).decode()
ro = rv_of(s.setAttributeValue, copy, [(CKA_EC_POINT, b"\\x04\\x00")])
sz = U(0); F.C_GetObjectSize(h(s.session), newh.value, ctypes.byref(sz)); size = sz.value
data = s.createObject([(CKA_CLASS, CKO_DATA), (CKA_TOKEN, False), (CKA_VALUE, b"payload"), (CKA_LABEL, "d")])
one = (rawp11.CK_ATTRIBUTE * 1)(); one[0].type = CKA_CLASS
zero = F.C_GetAttributeValue(h(s.session), 0, one, 1)
priv_import = rv_of(s.createObject, [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, False),
                                     (CKA_VALUE, b"\\x01" * 32)])
s2 = lib.openSession(slot, CKF_SERIAL_SESSION)
before = len(s2.findObjects([(CKA_CLASS, CKO_DATA)]))
s.closeSession()
after = len(s2.findObjects([(CKA_CLASS, CKO_DATA)]))
out(found=[h(x) for x in found], copy=newh.value, label=label, ro=ro, size=size, zero=zero,
    priv_import=priv_import, before=before, after=after)
""")
    assert res["found"] == [res["copy"]] and res["label"] == "renamed"
    assert res["ro"] == CKR.ATTRIBUTE_READ_ONLY and res["zero"] == CKR.OBJECT_HANDLE_INVALID
    assert res["priv_import"] == CKR.TEMPLATE_INCONSISTENT
    assert res["before"] == 1 and res["after"] == 0
    refused = [c for c in shim.calls("C_CreateObject") if c["rv"] == "CKR_TEMPLATE_INCONSISTENT"]
    assert refused and "keys live on the card" in refused[0]["error"]


def test_keygen_returns_the_cards_own_answer(shim):
    """Advertised key generation is still the card's: SoftHSM here really generates."""
    res = shim.run_python(CLIENT + """
s.closeSession(); s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION); s.login(PIN)
pub, priv = s.generateKeyPair([(CKA_TOKEN, False), (CKA_EC_PARAMS, bytes.fromhex("06082a8648ce3d030107")),
                               (CKA_VERIFY, True)], [(CKA_TOKEN, False), (CKA_SIGN, True)],
                              mecha=MechanismECGENERATEKEYPAIR)
sig = bytes(s.sign(priv, b"\\x02" * 32, Mechanism(CKM_ECDSA)))
out(ok=s.verify(pub, b"\\x02" * 32, sig, Mechanism(CKM_ECDSA)))
""")
    assert res["ok"]


def test_keyfromlabel_lookups_bind916(shim):
    res = shim.run_python(CLIENT + """
found = s.findObjects([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, True), (CKA_LABEL, "ec256")])
params, point = [bytes(v) for v in s.getAttributeValue(found[0], [CKA_EC_PARAMS, CKA_EC_POINT])]
privs = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, True), (CKA_LABEL, "ec256")])
out(n=len(found), np=len(privs), point=point.hex())
""")
    assert res["n"] == 1 and res["np"] == 1 and res["point"].startswith("044104")


def test_pkcs11_tool_test_through_the_shim(shim):
    proc = shim.run(["pkcs11-tool", "--module", shim.module, "--test", "--login", "--pin", "1234"], check=False)
    text = proc.stdout + proc.stderr
    print(text)
    assert "No errors" in text or proc.returncode == 0, text
