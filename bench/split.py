"""Child process: where a shim call's time goes, by switching parts of the audit record off.

Bench only: the shim's Python runs in this PyKCS11 interpreter (cffi embedding reuses it), so the
loop can replace the writer's methods of the live shim between rounds:

- ``as is``: the real record (JSON, chain, SHA-256, and the core's C append: flock, size
  check, one write(2), unlock);
- ``no file I/O``: the record is built and chained (summary, redaction, JSON, SHA-256), the C
  append replaced by a function that reports the line written;
- ``no record``: no audit record at all (dispatch, handler, cffi callback only).

Prints {"variant": {"sign": us/op, "sessioninfo": us/op}} of medians of interleaved rounds.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

import PyKCS11

from bench.pykcs11_loop import DIGEST


def main() -> int:
    module, pin, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    s.login(pin)
    key = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC)])[0]
    mech = PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None)
    ops: dict[str, tuple[Callable[[], object], int]] = {
        "sign": (lambda: s.sign(key, DIGEST, mech), 1500), "sessioninfo": (s.getSessionInfo, 15000)}
    shim = sys.modules["shim.runtime"].SHIM  # present only when MODULE is the shim
    w = shim.audit
    write_call, append = w.write_call, w._locked_append

    def as_is() -> None:
        w.write_call, w._locked_append = write_call, append

    def no_io() -> None:
        w.write_call, w._locked_append = write_call, lambda fd, size, line, sync: size + len(line)

    def no_record() -> None:
        w.write_call, w._locked_append = (lambda *a, **k: None), append

    variants = {"as is": as_is, "no file I/O": no_io, "no record": no_record}
    res: dict[str, dict[str, list[float]]] = {v: {o: [] for o in ops} for v in variants}
    for _r in range(rounds):
        for v, setup in variants.items():
            setup()
            for o, (f, n) in ops.items():
                for _ in range(50):
                    f()
                t0 = time.perf_counter()
                for _ in range(n):
                    f()
                res[v][o].append((time.perf_counter() - t0) / n * 1e6)
    as_is()
    json.dump({v: {o: statistics.median(x) for o, x in d.items()} for v, d in res.items()}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
