"""Child process: a PyKCS11 loop over one module, printing µs per operation as JSON.

Run by the per-call benchmark in a fresh interpreter per sample, so every sample pays the same
start-up and no module state leaks between direct / spy / shim.  ``--profile FILE`` wraps the loop
in cProfile; when the module is the shim, its Python runs in this very interpreter (cffi embedding
reuses an initialised interpreter), so the profile shows the shim's hot path too.

    python -m bench.pykcs11_loop --module M --pin P --label ecc256key --op sign --n 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import PyKCS11

DIGEST = bytes(range(32))  # raw CKM_ECDSA over a SHA-256-sized digest, as BIND's provider signs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--module", required=True)
    p.add_argument("--pin", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--op", choices=("sign", "sessioninfo"), required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=0.0, help="run at least this long (card-bound rate)")
    p.add_argument("--profile", help="write a cProfile dump of the timed loop here")
    a = p.parse_args(argv)

    lib = PyKCS11.PyKCS11Lib()
    lib.load(a.module)
    slot = lib.getSlotList(tokenPresent=True)[0]
    s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    s.login(a.pin)
    keys = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC)])
    if not keys:
        raise SystemExit(f"no EC private key on the token of {a.module}")
    key = keys[0]
    mech = PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None)

    def once() -> None:
        if a.op == "sign":
            s.sign(key, DIGEST, mech)  # C_SignInit + C_Sign(size) + C_Sign
        else:
            s.getSessionInfo()  # C_GetSessionInfo

    for _ in range(min(50, a.n)):  # warm-up: caches, lazy imports, first-call paths
        once()
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    n = 0
    t0 = time.perf_counter()
    while n < a.n or (a.seconds and time.perf_counter() - t0 < a.seconds):
        once()
        n += 1
    elapsed = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(a.profile)
    s.logout()
    s.closeSession()
    json.dump({"op": a.op, "n": n, "seconds": elapsed, "us_per_op": elapsed / n * 1e6, "pid": os.getpid()},
              sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
