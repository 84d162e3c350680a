"""A consumer signing through the shim (PyKCS11), one line of JSON per signature on stdout.

python -m tests.pool.signer MODULE LABEL PIN COUNT [THREADS]: finds the token by label, logs in,
signs COUNT SHA-256 digests with the EC key (CKA_ID 01) over THREADS sessions and prints
{"n": i, "digest": hex, "sig": hex} or {"n": i, "error": "CKR_..."}; the test verifies.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading

import PyKCS11


def main() -> int:
    module, label, pin, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    slot = next(s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == label)
    login = lib.openSession(slot)
    login.login(pin)
    lock = threading.Lock()
    todo = list(range(count))

    def work() -> None:
        s = lib.openSession(slot)
        key = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_ID, bytes.fromhex("01"))])[0]
        while True:
            with lock:
                if not todo:
                    break
                n = todo.pop(0)
            digest = hashlib.sha256(str(n).encode()).digest()
            try:
                sig = bytes(s.sign(key, digest, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)))
                out = {"n": n, "digest": digest.hex(), "sig": sig.hex()}
            except PyKCS11.PyKCS11Error as e:
                out = {"n": n, "error": PyKCS11.CKR[e.value]}
            with lock:
                print(json.dumps(out), flush=True)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
