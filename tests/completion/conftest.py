"""A SoftHSM token masked to a card's function set, and the shim in front of it.

The token is the ``softhsm-cardlike`` kind of the token table (sc4testkit/tokens.py): SoftHSM
offers only raw CKM_ECDSA, CKM_RSA_PKCS and the two key-pair generators
(``slots.mechanisms``); the shim's ``[mask]`` hides what cards lack: Verify, CreateObject/
CopyObject, Digest, Random, operation state and multi-part signing.  Unlike the plugin's
token, keys are made in software and imported (before the mask applies), so every result can
be checked against the known public keys.  Key ``rsa-nopub`` has no public key object on the
token (the shim must present one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sc4testkit.shimenv import ShimProcesses, shim_environment
from sc4testkit.tokens import SOFTHSM_CARDLIKE
from shim.locate import module_path
from virtualcard.pytest_plugin import softhsm_module

SOFTHSM = softhsm_module()
PIN = "1234"
TOKEN = "completion"


@dataclass
class Keys:
    ec256: ec.EllipticCurvePrivateKey
    ec384: ec.EllipticCurvePrivateKey
    rsa: rsa.RSAPrivateKey
    rsa_nopub: rsa.RSAPrivateKey


_IMPORT = """
import PyKCS11, sys, json
from PyKCS11.LowLevel import CKA_ALLOWED_MECHANISMS
from cryptography.hazmat.primitives import serialization
spec = json.loads(sys.stdin.read())
lib = PyKCS11.PyKCS11Lib(); lib.load(MODULE)
s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
s.login(PIN)
for k in spec:
    key = serialization.load_pem_private_key(k["pem"].encode(), None)
    label, kid = k["label"], bytes.fromhex(k["id"])
    common = [(PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_LABEL, label), (PyKCS11.CKA_ID, kid)]
    if k["type"] == "ec":
        nums = key.private_numbers()
        params = bytes.fromhex(k["params"])
        point = bytes.fromhex(k["point"])
        size = (key.curve.key_size + 7) // 8
        s.createObject(common + [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
            (PyKCS11.CKA_SIGN, True), (PyKCS11.CKA_PRIVATE, True), (PyKCS11.CKA_SENSITIVE, True),
            (PyKCS11.CKA_EC_PARAMS, params), (PyKCS11.CKA_VALUE, nums.private_value.to_bytes(size, "big"))])
        if k["pub"]:
            s.createObject(common + [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
                (PyKCS11.CKA_VERIFY, True), (PyKCS11.CKA_EC_PARAMS, params), (PyKCS11.CKA_EC_POINT, point)])
    else:
        n = key.private_numbers()
        b = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
        s.createObject(common + [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_RSA),
            (PyKCS11.CKA_SIGN, True), (PyKCS11.CKA_PRIVATE, True), (PyKCS11.CKA_SENSITIVE, True),
            (PyKCS11.CKA_MODULUS, b(n.public_numbers.n)), (PyKCS11.CKA_PUBLIC_EXPONENT, b(n.public_numbers.e)),
            (PyKCS11.CKA_PRIVATE_EXPONENT, b(n.d)), (PyKCS11.CKA_PRIME_1, b(n.p)), (PyKCS11.CKA_PRIME_2, b(n.q)),
            (PyKCS11.CKA_EXPONENT_1, b(n.dmp1)), (PyKCS11.CKA_EXPONENT_2, b(n.dmq1)), (PyKCS11.CKA_COEFFICIENT, b(n.iqmp))])
        if k["pub"]:
            s.createObject(common + [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_RSA),
                (PyKCS11.CKA_VERIFY, True), (PyKCS11.CKA_MODULUS, b(n.public_numbers.n)),
                (PyKCS11.CKA_PUBLIC_EXPONENT, b(n.public_numbers.e))])
s.logout()
"""

P256 = "06082a8648ce3d030107"
P384 = "06052b81040022"


def _point(key: ec.EllipticCurvePrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return (bytes([0x04, len(raw)]) + raw).hex()


def _pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="session")
def masked_token(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Keys]:
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(SOFTHSM_CARDLIKE.softhsm_conf(str(root / "tokens"), "slots.removable = false"))
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "5678"],
                   env=env, check=True, capture_output=True)
    keys = Keys(ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
                rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048))
    spec = [
        {"type": "ec", "label": "ec256", "id": "01", "pem": _pem(keys.ec256), "params": P256,
         "point": _point(keys.ec256), "pub": True},
        {"type": "ec", "label": "ec384", "id": "02", "pem": _pem(keys.ec384), "params": P384,
         "point": _point(keys.ec384), "pub": True},
        {"type": "rsa", "label": "rsa2048", "id": "03", "pem": _pem(keys.rsa), "pub": True},
        {"type": "rsa", "label": "rsa-nopub", "id": "04", "pem": _pem(keys.rsa_nopub), "pub": False},
    ]
    prelude = f"MODULE = {SOFTHSM!r}\nPIN = {PIN!r}\n"
    subprocess.run([sys.executable, "-c", prelude + _IMPORT], input=json.dumps(spec), env=env, check=True,
                   text=True, capture_output=True)
    return {"SOFTHSM2_CONF": str(conf)}, keys


@dataclass
class Completion(ShimProcesses):
    keys: Keys

    def run_python(self, code: str, *, direct: bool = False, timeout: float = 120) -> Any:
        """Run ``code`` (PyKCS11 client; MODULE, PIN, out() given) and return what it passed to out()."""
        prelude = (f"import json, os\nMODULE = {SOFTHSM if direct else self.module!r}\nPIN = {PIN!r}\n"
                   "_OUT = {}\ndef out(**kw):\n    _OUT.update(kw)\n")
        epilogue = "\nprint('@@RESULT@@' + json.dumps(_OUT))\n"
        proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + epilogue], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@"))
        return json.loads(line[len("@@RESULT@@"):])


def make_completion(masked_token: tuple[dict[str, str], Keys], tmp_path: Path,
                    extra: dict[str, Any] | None = None) -> Completion:
    token_env, keys = masked_token
    env, audit = shim_environment(tmp_path, SOFTHSM, token_env, {**SOFTHSM_CARDLIKE.shim_conf(), **(extra or {})})
    return Completion(module_path(), env, audit, keys)


@pytest.fixture
def shim(masked_token: tuple[dict[str, str], Keys], tmp_path: Path) -> Iterator[Completion]:
    yield make_completion(masked_token, tmp_path)
