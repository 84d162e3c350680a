"""Policy mode (ceremony safety): ``[policy] allow_functions`` lets only the listed functions
through; every other one returns CKR_ACTION_PROHIBITED without reaching the card, and each
denial is an audit record."""

from __future__ import annotations

import json
from pathlib import Path

from rel_helpers import ShimRun, Token, record_figure, signer_env

from shim.functions import FUNCTIONS

CEREMONY_ONLY = ["C_InitToken", "C_InitPIN", "C_SetPIN", "C_DestroyObject", "C_GenerateKeyPair", "C_CreateObject"]
ALLOW = [f.name for f in FUNCTIONS if f.name not in CEREMONY_ONLY]

CLIENT = r"""
import json, os, PyKCS11
MODULE, PIN = os.environ["P11_MODULE"], os.environ["P11_PIN"]
from PyKCS11 import *
lib = PyKCS11Lib(); lib.load(MODULE)
slot = lib.getSlotList(tokenPresent=True)[0]
s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION); s.login(PIN)
pub = s.findObjects([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_ID, b"\x01")])[0]
priv = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_ID, b"\x01")])[0]
out = {"sign": len(bytes(s.sign(priv, b"\x00" * 32, Mechanism(CKM_ECDSA))))}
attempts = {
    "C_DestroyObject": lambda: s.destroyObject(pub),
    "C_GenerateKeyPair": lambda: s.generateKeyPair(
        [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_EC_PARAMS, bytes.fromhex("06082a8648ce3d030107"))],
        [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_SIGN, True)], mecha=MechanismECGENERATEKEYPAIR),
    "C_CreateObject": lambda: s.createObject([(CKA_CLASS, CKO_DATA), (CKA_LABEL, "x"), (CKA_TOKEN, False)]),
    "C_SetPIN": lambda: s.setPin(PIN, "654321"),
    "C_InitPIN": lambda: s.initPin("654321"),
    "C_InitToken": lambda: lib.initToken(slot, "12345678", "hijacked"),
}
for fn, attempt in attempts.items():
    try:
        attempt(); out[fn] = "CKR_OK"
    except PyKCS11Error as e:
        out[fn] = CKR[e.value]
out["still_there"] = len(s.findObjects([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_ID, b"\x01")]))
s.logout(); s.login(PIN)  # the PIN was not changed
print(json.dumps(out))
"""


def test_functions_outside_the_allow_list_are_refused_and_audited(token: Token, tmp_path: Path) -> None:
    run = ShimRun.make(tmp_path / "run", token, conf={"policy": {"allow_functions": ALLOW}})
    proc = run.python(CLIENT, extra_env=signer_env(run))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sign"] == 64 and out["still_there"] == 1
    for fn in CEREMONY_ONLY:
        assert out[fn] == "CKR_ACTION_PROHIBITED", (fn, out[fn])
    denials = [r for r in run.records() if r["kind"] == "call" and r["rv"] == "CKR_ACTION_PROHIBITED"]
    assert sorted(r["fn"] for r in denials) == sorted(CEREMONY_ONLY)
    assert all("allow_functions" in (r.get("error") or "") for r in denials)
    config = next(r for r in run.records() if r["kind"] == "config")
    assert config["args"]["allow_functions"] == sorted(ALLOW)
    record_figure("policy", {"denied_functions": len(CEREMONY_ONLY), "denials_audited": len(denials)})
