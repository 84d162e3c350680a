"""A signing client over the shim (PyKCS11), like named signing a zone: run as a child process.

``python signer.py --out SIGS.jsonl [--threads N] [--count N | --seconds S] [--keys ec,rsa]``

Each thread opens its own session and signs random digests (CKM_ECDSA over a
SHA-256 digest, CKM_RSA_PKCS over a DigestInfo) until done.  Every signature is
appended to SIGS.jsonl (``{"k", "d", "s"}``, hex) after C_Sign returned, and
the public keys are written first, so the parent can verify every signature
with ``cryptography``.  A failed call is written as ``{"err": "CKR_..."}`` and
stops that thread unless ``--keep-going``; the exit code is 0 only if nothing
failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time

import PyKCS11

SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--count", type=int, default=0, help="signatures per thread (0: until --seconds)")
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--keys", default="ec")
    ap.add_argument("--keep-going", action="store_true")
    ap.add_argument("--reopen", action="store_true", help="after an error, open a new session (card re-inserted)")
    a = ap.parse_args()
    lib = PyKCS11.PyKCS11Lib()
    lib.load(os.environ["P11_MODULE"])
    pin = os.environ["P11_PIN"]
    slot = lib.getSlotList(tokenPresent=True)[0]
    keys = a.keys.split(",")
    out = open(a.out, "a", buffering=1)
    lock = threading.Lock()

    def emit(obj: dict[str, object]) -> None:
        with lock:
            out.write(json.dumps(obj) + "\n")

    s0 = lib.openSession(slot)
    s0.login(pin)
    ids = {"ec": b"\x01", "rsa": b"\x02"}  # SoftHSM test token; SIGNER_IDS="ec=hex,rsa=hex" for cards
    for item in filter(None, os.environ.get("SIGNER_IDS", "").split(",")):
        name, _, hexid = item.partition("=")
        ids[name] = bytes.fromhex(hexid)
    pub = {}
    for k in keys:
        certs = s0.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_CERTIFICATE), (PyKCS11.CKA_ID, ids[k])])
        if certs:  # a card: the certificate is what OpenSC finds keys by
            pub[k + "_cert"] = bytes(s0.getAttributeValue(certs[0], [PyKCS11.CKA_VALUE])[0]).hex()
            continue
        obj = s0.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_ID, ids[k])])[0]
        if k == "ec":
            params, point = s0.getAttributeValue(obj, [PyKCS11.CKA_EC_PARAMS, PyKCS11.CKA_EC_POINT])
            pub["ec"] = bytes(point).hex()
        else:
            n, e = s0.getAttributeValue(obj, [PyKCS11.CKA_MODULUS, PyKCS11.CKA_PUBLIC_EXPONENT])
            pub["rsa"] = [bytes(n).hex(), bytes(e).hex()]
    emit({"pub": pub})
    failures = []
    deadline = time.monotonic() + a.seconds if a.seconds else None

    def session() -> tuple[PyKCS11.Session, dict[str, PyKCS11.CK_OBJECT_HANDLE]]:
        s = lib.openSession(slot)
        try:
            s.login(pin)
        except PyKCS11.PyKCS11Error as e:  # one login per token and application
            if e.value != PyKCS11.CKR_USER_ALREADY_LOGGED_IN:
                raise
        return s, {k: s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                                     (PyKCS11.CKA_ID, ids[k])])[0] for k in keys}

    def worker(t: int) -> None:
        s, privs = session()
        i = 0
        while (a.count and i < a.count) or (deadline is not None and time.monotonic() < deadline):
            k = keys[i % len(keys)]
            digest = hashlib.sha256(os.urandom(16) + f"{t}/{i}".encode()).digest()
            try:
                if k == "ec":
                    sig = s.sign(privs[k], digest, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))
                else:
                    sig = s.sign(privs[k], SHA256_PREFIX + digest, PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS))
            except PyKCS11.PyKCS11Error as e:
                emit({"err": PyKCS11.CKR[e.value], "t": t, "i": i})
                failures.append(e)
                if not a.keep_going:
                    return
                if a.reopen:
                    time.sleep(0.2)
                    try:
                        s, privs = session()
                    except (PyKCS11.PyKCS11Error, IndexError) as e2:
                        emit({"err": f"reopen: {e2}", "t": t, "i": i})
            else:
                emit({"k": k, "d": digest.hex(), "s": bytes(sig).hex()})
            i += 1
        try:
            s.closeSession()
        except PyKCS11.PyKCS11Error:
            pass

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(a.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
