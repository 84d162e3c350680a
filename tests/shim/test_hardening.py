"""A host cannot kill itself through the shim: absurd lengths never reach the card, and C_Finalize
waits for other threads' calls in flight.  Raw ctypes hosts, because PyKCS11 passes neither."""

from __future__ import annotations

import json

HUGE_PIN_LEN = r"""
import ctypes, json
from sc4testkit.rawp11 import CK_ULONG, load
_, f = load(MODULE)
assert f.C_Initialize(None) == 0
slots = (CK_ULONG * 8)(); n = CK_ULONG(8)
assert f.C_GetSlotList(1, slots, ctypes.byref(n)) == 0
h = CK_ULONG()
assert f.C_OpenSession(slots[0], 4, None, None, ctypes.byref(h)) == 0
pin = PIN.encode()
out = {"huge": f.C_Login(h, 1, pin, 1 << 40), "count": f.C_FindObjectsInit(h, None, 1 << 40)}
out["sane"] = f.C_Login(h, 1, pin, len(pin))
f.C_Logout(h); f.C_Finalize(None)
print(json.dumps(out))
"""


def test_a_pin_length_of_2_to_the_40_is_arguments_bad_and_the_card_lives(shim_env):
    out = json.loads(shim_env.run_python(HUGE_PIN_LEN).stdout.splitlines()[-1])
    assert out == {"huge": 0x7, "count": 0x7, "sane": 0}  # CKR_ARGUMENTS_BAD twice, then a login
    logins = [c for c in shim_env.calls() if c["fn"] == "C_Login"]
    assert [c["rv"] for c in logins] == ["CKR_ARGUMENTS_BAD", "CKR_OK"]
    assert "beyond" in logins[0]["error"]


FINALIZE_WHILE_SIGNING = r"""
import ctypes, json, os, threading, time
from sc4testkit.rawp11 import CK_ATTRIBUTE, CK_MECHANISM, CK_ULONG, load
_, f = load(MODULE)
assert f.C_Initialize(None) == 0
slots = (CK_ULONG * 8)(); n = CK_ULONG(8)
assert f.C_GetSlotList(1, slots, ctypes.byref(n)) == 0
def session():
    h = CK_ULONG()
    assert f.C_OpenSession(slots[0], 4, None, None, ctypes.byref(h)) == 0
    return h
first = session()
pin = PIN.encode()
assert f.C_Login(first, 1, pin, len(pin)) == 0
kid = bytes.fromhex(os.environ["EC_ID"])
klass = CK_ULONG(3)
tmpl = (CK_ATTRIBUTE * 2)(CK_ATTRIBUTE(0, ctypes.cast(ctypes.byref(klass), ctypes.c_void_p), 8),
                          CK_ATTRIBUTE(0x102, ctypes.cast(ctypes.c_char_p(kid), ctypes.c_void_p), len(kid)))
assert f.C_FindObjectsInit(first, tmpl, 2) == 0
key = CK_ULONG(); found = CK_ULONG()
assert f.C_FindObjects(first, ctypes.byref(key), 1, ctypes.byref(found)) == 0 and found.value == 1
f.C_FindObjectsFinal(first)
THREADS = 4
signed = [0] * THREADS
last = [None] * THREADS
def signer(i):
    h = session()
    mech = CK_MECHANISM(0x1041, None, 0)
    data = ctypes.create_string_buffer(b"\x07" * 32, 32)
    sig = ctypes.create_string_buffer(512)
    while True:
        rv = f.C_SignInit(h, ctypes.byref(mech), key)
        if rv == 0:
            sl = CK_ULONG(512)
            rv = f.C_Sign(h, data, 32, sig, ctypes.byref(sl))
        if rv != 0:
            last[i] = rv
            return
        signed[i] += 1
threads = [threading.Thread(target=signer, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
while min(signed) < 5:
    time.sleep(0.001)
fin = f.C_Finalize(None)     # the other threads are signing
for t in threads:
    t.join()
print(json.dumps({"finalize": fin, "last": last, "signed": sum(signed)}))
"""


def test_finalize_while_other_threads_sign_waits_for_them(shim_env):
    labels = {"EC_ID": shim_env.card.keys["ec"].id.hex()}
    proc = shim_env.run_python(FINALIZE_WHILE_SIGNING, extra_env=labels, check=False)
    assert proc.returncode == 0, f"the host died ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["finalize"] == 0 and out["signed"] >= 20
    # Every signer stopped on the answer for a finalized library, none on a crash or a bad session
    # handed to the card after C_Finalize.
    assert set(out["last"]) <= {0x190, 0xB3, 0xB0}, out  # NOT_INITIALIZED, SESSION_HANDLE_INVALID, CLOSED
    fin = [c for c in shim_env.calls() if c["fn"] == "C_Finalize"]
    assert len(fin) == 1 and fin[0]["rv"] == "CKR_OK"
