"""A consumer signing through the shim (PyKCS11), driven batch by batch from stdin.

python -m tests.pool.signer MODULE LABEL PIN THREADS: finds the token by label, logs in, opens
THREADS sessions and finds the EC key (CKA_ID 01) in each.  Each stdin line ``N`` signs N SHA-256
digests over the THREADS sessions; each signature is a stdout line {"n": i, "digest": hex, "sig": hex}
or {"n": i, "error": "CKR_..."}, and the batch ends with {"batch": N}.  The test verifies.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading

import PyKCS11


def main() -> int:
    module, label, pin, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    slot = next(s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == label)
    login = lib.openSession(slot)
    login.login(pin)
    sessions = []
    for _ in range(threads):
        s = lib.openSession(slot)
        key = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_ID, b"\x01")])[0]
        sessions.append((s, key))
    lock = threading.Lock()
    done = 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        todo = list(range(done, done + int(line)))
        done += len(todo)

        def work(s: PyKCS11.Session, key: PyKCS11.CK_OBJECT_HANDLE, todo: list[int]) -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    n = todo.pop(0)
                digest = hashlib.sha256(str(n).encode()).digest()
                try:
                    sig = bytes(s.sign(key, digest, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)))
                    out = {"n": n, "digest": digest.hex(), "sig": sig.hex()}
                except PyKCS11.PyKCS11Error as e:
                    out = {"n": n, "error": PyKCS11.CKR[e.value]}
                with lock:
                    print(json.dumps(out), flush=True)

        ts = [threading.Thread(target=work, args=(*sk, todo)) for sk in sessions]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        print(json.dumps({"batch": int(line)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
