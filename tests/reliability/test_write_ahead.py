"""Nothing changes on the card unrecorded: with the audit log unwritable (RLIMIT_FSIZE), a
C_DestroyObject, a C_CreateObject of a token object and a C_SetPIN are refused before they reach
the card (their write-ahead record could not be written), and the token is as it was."""

from __future__ import annotations

import json
from pathlib import Path

from rel_helpers import ShimRun, Token, record_figure, signer_env

from shim.audit.verify import verify

HOST = r"""
import ctypes, json, os, resource, signal
from sc4testkit.rawp11 import CK_ATTRIBUTE, CK_ULONG, load
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG instead
CKA_CLASS, CKA_TOKEN, CKA_LABEL, CKO_DATA = 0, 1, 3, 0
_, f = load(os.environ["P11_MODULE"])
pin, new_pin = os.environ["P11_PIN"].encode(), b"N3wPin00"
assert f.C_Initialize(None) == 0
slots = (CK_ULONG * 8)(); n = CK_ULONG(8)
assert f.C_GetSlotList(1, slots, ctypes.byref(n)) == 0
h = CK_ULONG()
assert f.C_OpenSession(slots[0], 6, None, None, ctypes.byref(h)) == 0
assert f.C_Login(h, 1, pin, len(pin)) == 0
klass, true = CK_ULONG(CKO_DATA), ctypes.c_ubyte(1)
def template(label):
    lab = ctypes.create_string_buffer(label, len(label))
    t = (CK_ATTRIBUTE * 3)(CK_ATTRIBUTE(CKA_CLASS, ctypes.cast(ctypes.byref(klass), ctypes.c_void_p), 8),
                           CK_ATTRIBUTE(CKA_TOKEN, ctypes.cast(ctypes.byref(true), ctypes.c_void_p), 1),
                           CK_ATTRIBUTE(CKA_LABEL, ctypes.cast(lab, ctypes.c_void_p), len(label)))
    return t, lab
def find(label):
    t, keep = template(label)
    assert f.C_FindObjectsInit(h, t, 3) == 0
    objs = (CK_ULONG * 4)(); found = CK_ULONG()
    assert f.C_FindObjects(h, objs, 4, ctypes.byref(found)) == 0
    f.C_FindObjectsFinal(h)
    return list(objs)[:found.value]
t, keep = template(b"victim")
victim = CK_ULONG()
assert f.C_CreateObject(h, t, 3, ctypes.byref(victim)) == 0
size = os.path.getsize(os.environ["AUDIT_LOG"])
resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
out = {"destroy": f.C_DestroyObject(h, victim)}
t2, keep2 = template(b"intruder")
made = CK_ULONG()
out["create"] = f.C_CreateObject(h, t2, 3, ctypes.byref(made))
out["setpin"] = f.C_SetPIN(h, pin, len(pin), new_pin, len(new_pin))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
out["victim_left"] = len(find(b"victim"))
out["intruders"] = len(find(b"intruder"))
f.C_Logout(h)
out["old_pin_works"] = f.C_Login(h, 1, pin, len(pin)) == 0
f.C_DestroyObject(h, victim)
f.C_Logout(h); f.C_CloseSession(h); f.C_Finalize(None)
print(json.dumps(out))
"""


def test_state_changes_are_refused_before_the_card_when_the_log_cannot_take_their_record(
        token: Token, tmp_path: Path) -> None:
    run = ShimRun.make(tmp_path / "run", token)
    proc = run.python(HOST, extra_env={**signer_env(run), "AUDIT_LOG": str(run.audit_log)})
    out = json.loads(proc.stdout.splitlines()[-1])
    assert (out["destroy"], out["create"], out["setpin"]) == (5, 5, 5), out  # CKR_GENERAL_ERROR each
    assert out["victim_left"] == 1 and out["intruders"] == 0 and out["old_pin_works"], out
    recs = run.records()
    assert verify(str(run.audit_log)).ok
    # Every state change that did happen was announced first: each call record of a state-changing
    # function has its intent before it.
    intents = [r for r in recs if r["kind"] == "intent"]
    assert {"C_Login", "C_CreateObject", "C_DestroyObject", "C_Logout"} <= {r["fn"] for r in intents}
    pending: dict[str, int] = {}
    for r in recs:
        if r["kind"] == "intent":
            pending[r["fn"]] = pending.get(r["fn"], 0) + 1
        elif r["kind"] == "call" and r["fn"] in {x["fn"] for x in intents} and r["rv"] != "CKR_GENERAL_ERROR":
            assert pending.get(r["fn"], 0) > 0, f"{r['fn']} seq {r['seq']} had no intent record before it"
            pending[r["fn"]] -= 1
    record_figure("write_ahead", {"refused_unrecorded": 3, "intents": len(intents)})
