from conftest import CLIENT


def test_ecdsa_sign_then_verify_in_software(shim):
    res = shim.run_python(CLIENT + """
priv = key("ec256", CKO_PRIVATE_KEY); pub = key("ec256", CKO_PUBLIC_KEY)
sig = bytes(s.sign(priv, b"\\x01" * 32, Mechanism(CKM_ECDSA)))
out(ok=s.verify(pub, b"\\x01" * 32, sig, Mechanism(CKM_ECDSA)), sig=sig.hex())
""")
    assert res["ok"]
