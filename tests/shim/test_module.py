"""The shim as a PKCS#11 module: loaded by real consumers over a real token."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sc4testkit.quirks import behaviour
from sc4testkit.tokens import TOKENS
from shim._build import function_list_struct
from shim.functions import FUNCTIONS

SPY = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so"
CANARY_PIN = "7q3Zk9Xw"  # 8 characters: PIV PINs are at most 8


def test_every_pkcs11_function_is_an_exported_symbol(shim_env):
    out = subprocess.run(["nm", "-D", "--defined-only", shim_env.module], capture_output=True, text=True,
                         check=True).stdout
    exported = set(re.findall(r" T (C_\w+)$", out, re.M))
    expected = {f.name for f in FUNCTIONS} | {"C_GetInterfaceList", "C_GetInterface"}
    assert expected <= exported, expected - exported


def test_pkcs11_tool_lists_the_token_unchanged(shim_env):
    direct = shim_env.run(["pkcs11-tool", "--module", shim_env.card.module, "-L"]).stdout
    through = shim_env.run(["pkcs11-tool", "--module", shim_env.module, "-L"]).stdout
    fields = r"(token label|token manufacturer|token model|serial num)\s*: (.*)"
    assert re.findall(fields, through) == re.findall(fields, direct)
    assert shim_env.card.token_label in through


SIGN_BOTH = """
import json, PyKCS11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
lib = PyKCS11.PyKCS11Lib(); lib.load(MODULE)
slot = lib.getSlotList(tokenPresent=True)[0]
s = lib.openSession(slot); s.login(PIN)
out = {"info": lib.getInfo().manufacturerID.strip()}
def find(cls, key_id):
    objs = s.findObjects([(PyKCS11.CKA_CLASS, cls), (PyKCS11.CKA_ID, bytes.fromhex(key_id))])
    assert len(objs) >= 1, (cls, key_id)
    return objs[0]
data = b"example.zone. 3600 IN DNSKEY 257 3 13 ..." * 3
import hashlib
digest = hashlib.sha256(data).digest()
ec_label, rsa_label = os.environ["EC_ID"], os.environ["RSA_ID"]
priv = find(PyKCS11.CKO_PRIVATE_KEY, ec_label); pub = find(PyKCS11.CKO_PUBLIC_KEY, ec_label)
sig = bytes(s.sign(priv, digest, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)))
params, point = s.getAttributeValue(pub, [PyKCS11.CKA_EC_PARAMS, PyKCS11.CKA_EC_POINT])
point = bytes(point); raw = point[2:] if point[0] == 4 and len(point) in (67, 99) else point
curves = {"06082a8648ce3d030107": ec.SECP256R1(), "06052b81040022": ec.SECP384R1()}
curve = curves[bytes(params).hex()]
key = ec.EllipticCurvePublicKey.from_encoded_point(curve, raw)
n = len(sig) // 2
key.verify(utils.encode_dss_signature(int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big")),
           digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
priv = find(PyKCS11.CKO_PRIVATE_KEY, rsa_label); pub = find(PyKCS11.CKO_PUBLIC_KEY, rsa_label)
info = hashlib.sha256(data).digest()
digestinfo = bytes.fromhex("3031300d060960864801650304020105000420") + info
rsig = bytes(s.sign(priv, digestinfo, PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS)))
mod, exp = s.getAttributeValue(pub, [PyKCS11.CKA_MODULUS, PyKCS11.CKA_PUBLIC_EXPONENT])
rkey = rsa.RSAPublicNumbers(int.from_bytes(bytes(exp), "big"), int.from_bytes(bytes(mod), "big")).public_key()
rkey.verify(rsig, data, padding.PKCS1v15(), hashes.SHA256())
out["rsa_signature"] = rsig.hex()
s.logout(); s.closeSession()
print(json.dumps(out))
"""


def _labels(card) -> dict[str, str]:
    return {"EC_ID": card.keys["ec"].id.hex(), "RSA_ID": card.keys["rsa"].id.hex()}


def test_sign_through_shim_verifies_and_equals_direct(shim_env):
    """ECDSA and RSA signatures verify with cryptography; RSA PKCS#1 v1.5 is
    deterministic, so the shim's signature must equal the backend's own."""
    labels = _labels(shim_env.card)
    through = json.loads(shim_env.run_python(SIGN_BOTH, extra_env=labels).stdout)
    direct = json.loads(shim_env.run_python(SIGN_BOTH, direct=True, extra_env=labels).stdout)
    assert through["info"] == "smartcards4dnssec"
    assert through["rsa_signature"] == direct["rsa_signature"]
    signs = [c for c in shim_env.calls() if c["fn"] == "C_Sign" and c["rv"] == "CKR_OK"]
    made = [c for c in signs if c["src"] == "card"]  # the others are PyKCS11's length queries
    assert len(made) == 2 and all(len(c["args"]["data_sha256"]) == 64 for c in made)
    assert [c["args"]["signature_len"] for c in made] == [64, 256]


def test_key_generation_through_shim(shim_env):
    if not shim_env.card.can_generate:
        pytest.skip(f"{shim_env.card.kind} cannot generate keys through PKCS#11 (documented)")
    out = shim_env.run(["pkcs11-tool", "--module", shim_env.module, "--login", "--pin", shim_env.card.pin,
                        "--keypairgen", "--key-type", "EC:prime256v1", "--label", "gen-ec", "--id", "a1"])
    assert "gen-ec" in out.stdout
    out = shim_env.run(["pkcs11-tool", "--module", shim_env.module, "--login", "--pin", shim_env.card.pin,
                        "--keypairgen", "--key-type", "rsa:2048", "--label", "gen-rsa", "--id", "a2"])
    assert "gen-rsa" in out.stdout
    gens = [c for c in shim_env.calls() if c["fn"] == "C_GenerateKeyPair"]
    assert [c["rv"] for c in gens] == ["CKR_OK", "CKR_OK"]
    assert gens[0]["args"]["mechanism"] == "CKM_EC_KEY_PAIR_GEN"


def test_audit_log_has_every_call_in_order(shim_env, tmp_path):
    """pkcs11-spy between pkcs11-tool and the shim sees what the consumer
    called; the shim's audit log must list exactly those calls, in order."""
    spy_log = tmp_path / "spy.log"
    data = tmp_path / "data"
    data.write_bytes(b"\x11" * 32)
    shim_env.run(["pkcs11-tool", "--module", SPY, "--login", "--pin", shim_env.card.pin, "--sign",
                  "-m", "ECDSA", "--id", shim_env.card.keys["ec"].id.hex(), "-i", str(data),
                  "-o", str(tmp_path / "sig")],
                 extra_env={"PKCS11SPY": shim_env.module, "PKCS11SPY_OUTPUT": str(spy_log)})
    spied = re.findall(r"^\d+: (C_\w+)", spy_log.read_text(), re.M)
    audited = [c["fn"] for c in shim_env.calls()]
    spied = [f for f in spied if f not in ("C_GetFunctionList", "C_GetInterface", "C_GetInterfaceList")]
    assert audited == spied
    records = shim_env.records()
    assert [r["seq"] for r in records] == list(range(records[0]["seq"], records[0]["seq"] + len(records)))
    kinds = {r["kind"] for r in records}
    assert {"load", "config", "backend", "call"} <= kinds


def test_audit_verify_accepts_the_log(shim_env):
    shim_env.run(["pkcs11-tool", "--module", shim_env.module, "-L"])
    shim_env.run(["pkcs11-tool", "--module", shim_env.module, "-O"])
    out = subprocess.run([sys.executable, "-m", "shim.cli", "audit", "verify", str(shim_env.audit_log)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_planted_pin_never_reaches_any_output(shim_env):
    wrong = shim_env.run(["pkcs11-tool", "--module", shim_env.module, "--login", "--pin", CANARY_PIN, "-O"],
                         check=False)
    assert "CKR_PIN_INCORRECT" in wrong.stdout + wrong.stderr
    right = shim_env.run(["pkcs11-tool", "--module", shim_env.module, "--login", "--pin", shim_env.card.pin,
                          "-O"])
    log = shim_env.audit_log.read_text()
    logins = [c for c in shim_env.calls() if c["fn"] == "C_Login"]
    assert [c["rv"] for c in logins] == ["CKR_PIN_INCORRECT", "CKR_OK"]
    for text in (log, wrong.stdout, wrong.stderr, right.stdout, right.stderr):
        assert CANARY_PIN not in text
        assert CANARY_PIN.encode().hex() not in text
    assert f'"{shim_env.card.pin}"' not in log


def test_missing_backend_gives_a_clear_error_not_a_crash(shim_env):
    out = shim_env.run(["pkcs11-tool", "--module", shim_env.module, "-L"], check=False,
                       extra_env={"SC4DNSSEC_BACKEND": "/nonexistent/card-module.so"})
    assert out.returncode == 1  # pkcs11-tool's own error exit, not a signal
    assert "CKR_GENERAL_ERROR" in out.stdout + out.stderr
    assert "/nonexistent/card-module.so" in out.stderr
    init = [c for c in shim_env.calls() if c["fn"] == "C_Initialize"]
    assert init and init[-1]["rv"] == "CKR_GENERAL_ERROR" and "does not exist" in init[-1]["error"]


RAW_INIT_RULES = """
import ctypes, json
from sc4testkit import rawp11
lib, fl = rawp11.load(MODULE)
res = {}
res["before_init"] = fl.C_GetSlotList(0, None, ctypes.byref(ctypes.c_ulong()))
args = rawp11.CK_C_INITIALIZE_ARGS(); args.pReserved = 1
res["reserved"] = fl.C_Initialize(ctypes.addressof(args))
args = rawp11.CK_C_INITIALIZE_ARGS(); args.CreateMutex = 1
res["partial_mutexes"] = fl.C_Initialize(ctypes.addressof(args))
args = rawp11.CK_C_INITIALIZE_ARGS(CreateMutex=1, DestroyMutex=1, LockMutex=1, UnlockMutex=1, flags=0)
res["app_mutexes"] = fl.C_Initialize(ctypes.addressof(args))
args = rawp11.CK_C_INITIALIZE_ARGS(flags=2)
res["init"] = fl.C_Initialize(ctypes.addressof(args))
res["again"] = fl.C_Initialize(None)
n = ctypes.c_ulong(0)
res["count"] = fl.C_GetSlotList(1, None, ctypes.byref(n))
res["finalize_reserved"] = fl.C_Finalize(1)
res["finalize"] = fl.C_Finalize(None)
res["after_finalize"] = fl.C_GetSlotList(1, None, ctypes.byref(n))
res["reinit"] = fl.C_Initialize(None)
res["get_info_null"] = fl.C_GetInfo(None)
print(json.dumps(res))
"""


def test_initialize_argument_rules(shim_env):
    res = json.loads(shim_env.run_python(RAW_INIT_RULES).stdout)
    assert res == {
        "before_init": 0x190, "reserved": 0x7, "partial_mutexes": 0x7, "app_mutexes": 0xA, "init": 0,
        "again": 0x191, "count": 0, "finalize_reserved": 0x7, "finalize": 0, "after_finalize": 0x190,
        "reinit": 0, "get_info_null": 0x7,
    }


@pytest.fixture(scope="session")
def c_host(tmp_path_factory) -> Path:
    """tests/shim/c_host.c built against the shim's own generated ABI description."""
    d = tmp_path_factory.mktemp("c_host")
    (d / "function_list.h").write_text(function_list_struct())
    here = Path(__file__).resolve().parent
    exe = d / "c_host"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(here / "c_host.c"), f"-I{d}",
                    f"-I{here.parent.parent / 'shim' / 'c'}", "-ldl", "-lpthread"], check=True)
    return exe


@pytest.mark.parametrize("mode", ["local", "deepbind", "global"])
def test_c_host_threads_sign_concurrently(shim_env, c_host, mode):
    out = shim_env.run([str(c_host), shim_env.module, mode, "4", "25"],
                       extra_env={"P11_PIN": shim_env.card.pin, "P11_KEY_LABEL": shim_env.card.keys["ec"].label})
    assert out.stdout.strip() == "ok 100"
    signs = [c for c in shim_env.calls() if c["fn"] == "C_Sign"]
    assert len(signs) == 100 and {c["rv"] for c in signs} == {"CKR_OK"}
    assert len({c["thread"] for c in signs}) == 4


def test_forked_child_reinitialises_and_signs(shim_env, c_host):
    env = {"P11_PIN": shim_env.card.pin, "P11_KEY_LABEL": shim_env.card.keys["ec"].label, "P11_FORK": "1"}
    shared = behaviour("fork_shares_the_card", TOKENS[shim_env.card.kind].module)
    if shared:  # the module itself still does it (else the named behaviour is stale), then skip
        direct = shim_env.run([str(c_host), shim_env.card.module, "local", "1", "5"], extra_env=env, check=False)
        assert direct.returncode != 0 and "C_Login" in direct.stderr and "-> 0x100" in direct.stderr, direct.stderr
        pytest.skip(f"{shim_env.card.kind}: {shared.why}")
    out = shim_env.run([str(c_host), shim_env.module, "local", "1", "5"], extra_env=env)
    assert out.stdout.strip() == "ok 5"
    calls = shim_env.calls()
    pids = {c["pid"] for c in calls}
    assert len(pids) == 2
    child = [c for c in calls if c["pid"] != calls[0]["pid"]]
    assert child[0]["fn"] == "C_Initialize" and child[0]["rv"] == "CKR_OK"
    assert [c["rv"] for c in child if c["fn"] == "C_Sign"] == ["CKR_OK"] * 5
    epochs = {r["epoch"] for r in shim_env.records() if r["pid"] == child[0]["pid"]}
    assert len(epochs) == 1 and epochs != {calls[0]["epoch"]}


def test_broken_config_refuses_initialisation_and_says_why(shim_env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[audit]\non_failure = 'maybe'\n")
    out = shim_env.run(["pkcs11-tool", "--module", shim_env.module, "-L"], check=False,
                       extra_env={"SC4DNSSEC_CONF": str(bad)})
    assert out.returncode == 1 and "CKR_GENERAL_ERROR" in out.stdout + out.stderr
    assert "on_failure" in out.stderr  # the operator learns which setting is wrong
    config = [r for r in shim_env.records() if r["kind"] == "config"]
    assert config and "on_failure" in config[-1]["error"]
    init = [c for c in shim_env.calls() if c["fn"] == "C_Initialize"]
    assert init[-1]["rv"] == "CKR_GENERAL_ERROR" and "configuration error" in init[-1]["error"]


FAIL_CLOSED_SIGN = """
import ctypes, json, os, resource, signal
from sc4testkit import rawp11
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
lib, fl = rawp11.load(MODULE)
assert fl.C_Initialize(None) == 0
slots = (ctypes.c_ulong * 8)(); n = ctypes.c_ulong(8)
assert fl.C_GetSlotList(1, slots, ctypes.byref(n)) == 0
h = ctypes.c_ulong()
assert fl.C_OpenSession(slots[0], 4, None, None, ctypes.byref(h)) == 0
assert fl.C_Login(h, 1, PIN.encode(), len(PIN)) == 0
cls = ctypes.c_ulong(3); kid = bytes.fromhex(os.environ["EC_ID"])
tmpl = (rawp11.CK_ATTRIBUTE * 2)((0, ctypes.cast(ctypes.byref(cls), ctypes.c_void_p), 8),
                                 (0x102, ctypes.cast(ctypes.c_char_p(kid), ctypes.c_void_p), len(kid)))
key = ctypes.c_ulong(); cnt = ctypes.c_ulong()
assert fl.C_FindObjectsInit(h, tmpl, 2) == 0
assert fl.C_FindObjects(h, ctypes.byref(key), 1, ctypes.byref(cnt)) == 0 and cnt.value == 1
assert fl.C_FindObjectsFinal(h) == 0
mech = rawp11.CK_MECHANISM(0x1041, None, 0)
def sign():
    sig = (ctypes.c_ubyte * 128)(*([0xEE] * 128)); ln = ctypes.c_ulong(128)
    assert fl.C_SignInit(h, ctypes.byref(mech), key) == 0
    rv = fl.C_Sign(h, b"\\x11" * 32, 32, sig, ctypes.byref(ln))
    return rv, ln.value, bytes(sig)
log = os.environ["SC4DNSSEC_AUDIT_LOG"]
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(log) + 600, resource.RLIM_INFINITY))
refused = sign()  # the C_SignInit record fits under the limit, the C_Sign record does not
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
again = sign()
print(json.dumps({"refused": [refused[0], refused[1], refused[2][:64].hex()], "again": [again[0], again[1]]}))
"""


def test_fail_closed_refusal_hands_back_no_signature(shim_env):
    """fail-closed (the default): a signature the card made but the log could not
    record is withheld — buffer zeroed, length 0 — and the session signs again
    once the log is writable."""
    key_id = shim_env.card.keys["ec"].id.hex()
    res = json.loads(shim_env.run_python(FAIL_CLOSED_SIGN, extra_env={"EC_ID": key_id}).stdout)
    rv, length, head = res["refused"]
    assert rv == 0x5 and length == 0 and head == "00" * 64
    assert res["again"] == [0, 64]
