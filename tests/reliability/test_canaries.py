"""Secret canaries: planted PINs, a PIN file's contents and a secret key's CKA_VALUE never
appear in the audit log, the client's stdout/stderr, or syslog — in any encoding (raw,
hex, base64, SHA-256)."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
from pathlib import Path

import pytest
from rel_helpers import ShimRun, SyslogCapture, Token, devlog_prefix, record_figure, signer_env

CLIENT = r"""
import os, PyKCS11
from PyKCS11 import *
MODULE, PIN = os.environ["P11_MODULE"], os.environ["P11_PIN"]
pin_file_pin = open(os.environ["PIN_FILE"]).read().strip()   # like pin-source=file:
wrong = os.environ["WRONG_PIN"]
key_value = bytes.fromhex(os.environ["KEY_VALUE"])
lib = PyKCS11Lib(); lib.load(MODULE)
slot = lib.getSlotList(tokenPresent=True)[0]
s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(PIN)
s.setPin(PIN, pin_file_pin)                      # the new PIN comes from the file
s.logout()
try:
    s.login(wrong)
except PyKCS11Error as e:
    assert e.value == CKR_PIN_INCORRECT, e
s.login(pin_file_pin)
h = s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_TOKEN, False),
                    (CKA_SENSITIVE, False), (CKA_EXTRACTABLE, True), (CKA_SIGN, True),
                    (CKA_LABEL, "canary"), (CKA_VALUE, key_value)])
assert bytes(s.getAttributeValue(h, [CKA_VALUE])[0]) == key_value
s.sign(h, b"data", Mechanism(CKM_SHA256_HMAC))
priv = s.findObjects([(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_ID, b"\x01")])[0]
try:
    s.getAttributeValue(priv, [CKA_VALUE])
except PyKCS11Error:
    pass
s.destroyObject(h)
s.logout(); s.closeSession()
print("client done")
"""


def forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            hashlib.sha256(secret).hexdigest().encode()]


def test_pins_pin_files_and_key_values_never_leak(token: Token, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private /dev/log needs root and unshare")
    pin_canary = "Pf" + secrets.token_hex(3)  # 8 characters: PIV PINs are at most 8
    wrong_canary = "Wr" + secrets.token_hex(3)
    key_canary = b"KEYCANARY-" + secrets.token_hex(11).encode()
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin_canary + "\n")
    run = ShimRun.make(tmp_path / "run", token, conf={"audit": {"syslog": True}})
    capture = SyslogCapture(Path("/tmp") / f"sc4-canary-{os.getpid()}-{secrets.token_hex(4)}.sock")
    try:
        proc = run.python(CLIENT, prefix=devlog_prefix(tmp_path, capture.path), extra_env={
            **signer_env(run), "PIN_FILE": str(pin_file), "WRONG_PIN": wrong_canary,
            "KEY_VALUE": key_canary.hex()})
    finally:
        msgs = capture.close()
        capture.path.unlink(missing_ok=True)
    assert "client done" in proc.stdout
    log = run.audit_log.read_bytes()
    fns = [r["fn"] for r in run.records() if r["kind"] == "call"]
    for fn in ("C_SetPIN", "C_Login", "C_CreateObject", "C_GetAttributeValue"):
        assert fn in fns  # the secrets passed through calls that were recorded
    assert msgs, "nothing reached syslog"
    outputs = {"audit log": log, "stdout": proc.stdout.encode(), "stderr": proc.stderr.encode(),
               "syslog": b"\n".join(msgs)}
    planted = {"PIN from file": pin_canary.encode(),
               "wrong PIN": wrong_canary.encode(), "CKA_VALUE": key_canary}
    checked = 0
    for what, secret in planted.items():
        for form in forms(secret):
            for where, data in outputs.items():
                assert form not in data, f"{what} found in {where} (as {form[:16]!r}...)"
                checked += 1
    record_figure("canaries", {"secrets": 3, "encodings": 5, "outputs": len(outputs), "searches": checked})


# A C host that reuses one buffer: the PIN it logged in with is still there when the same memory
# becomes C_GetAttributeValue's output (PyKCS11 would hand over zeroed buffers instead).
REUSING_HOST = r"""
import ctypes, os
from sc4testkit.rawp11 import CK_ATTRIBUTE, CK_ULONG, load
CKA_CLASS, CKA_LABEL, CKA_ID, CKA_VALUE, CKA_EC_POINT = 0, 3, 0x102, 0x11, 0x181
_, f = load(os.environ["P11_MODULE"])
old, canary = os.environ["P11_PIN"].encode(), os.environ["CANARY_PIN"].encode()
assert f.C_Initialize(None) == 0
slots = (CK_ULONG * 8)(); n = CK_ULONG(8)
assert f.C_GetSlotList(1, slots, ctypes.byref(n)) == 0
h = CK_ULONG()
assert f.C_OpenSession(slots[0], 6, None, None, ctypes.byref(h)) == 0
assert f.C_Login(h, 1, old, len(old)) == 0
assert f.C_SetPIN(h, old, len(old), canary, len(canary)) == 0
assert f.C_Logout(h) == 0
buf = [ctypes.create_string_buffer(canary * 8, 8 * len(canary)) for _ in range(4)]
assert f.C_Login(h, 1, buf[0], len(canary)) == 0      # the PIN is read from buf[0]...
tmpl = (CK_ATTRIBUTE * 1)(CK_ATTRIBUTE(CKA_CLASS, ctypes.cast(buf[1], ctypes.c_void_p), 8))
assert f.C_FindObjectsInit(h, tmpl, 0) == 0
objs = (CK_ULONG * 16)(); found = CK_ULONG()
assert f.C_FindObjects(h, objs, 16, ctypes.byref(found)) == 0 and found.value > 0
assert f.C_FindObjectsFinal(h) == 0
def template(*types):
    return (CK_ATTRIBUTE * len(types))(*[CK_ATTRIBUTE(t, ctypes.cast(buf[i], ctypes.c_void_p), len(buf[i]))
                                         for i, t in enumerate(types)])
for obj in list(objs)[:found.value]:
    f.C_GetAttributeValue(h, obj, template(CKA_LABEL, CKA_ID, CKA_CLASS, CKA_VALUE), 4)   # ...and reused here
    f.C_GetAttributeValue(h, obj, template(CKA_EC_POINT, CKA_LABEL), 2)
f.C_GetAttributeValue(h, 0xBAD0BAD, template(CKA_LABEL, CKA_ID), 2)  # fails: nothing written
assert f.C_Logout(h) == 0 and f.C_CloseSession(h) == 0 and f.C_Finalize(None) == 0
print("reusing host done", found.value)
"""


def test_a_pin_left_in_a_reused_output_buffer_never_leaks(token: Token, tmp_path: Path) -> None:
    canary = "Pr" + secrets.token_hex(3)  # 8 characters: PIV PINs are at most 8
    run = ShimRun.make(tmp_path / "run", token)
    proc = run.python(REUSING_HOST, extra_env={**signer_env(run), "CANARY_PIN": canary})
    assert "reusing host done" in proc.stdout
    fns = [r["fn"] for r in run.records() if r["kind"] == "call"]
    assert fns.count("C_GetAttributeValue") >= 3  # the buffers passed through recorded calls
    log = run.audit_log.read_bytes()
    outputs = {"audit log": log, "stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()}
    checked = 0
    for form in forms(canary.encode()):
        for where, data in outputs.items():
            assert form not in data, f"PIN left in a reused output buffer found in {where} (as {form!r})"
            checked += 1
    record_figure("canaries_reused_buffers", {"get_attribute_calls": fns.count("C_GetAttributeValue"),
                                              "searches": checked})
