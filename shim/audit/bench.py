"""``python3 -m shim.audit.bench [DIR]``: per-record cost of AuditWriter on this host.

Writes typical C_Sign records (one thread, one process) to a temporary file in
DIR (default: the system temp dir) and prints microseconds per record for
fsync="none" and fsync="always", plus the encoding share.
"""

from __future__ import annotations

import sys
import tempfile
import timeit

from shim.audit.writer import AuditWriter

ARGS = {"session": 1, "mechanism": "CKM_ECDSA", "key": 2, "data_len": 32, "data_sha256": "ab" * 32}


def per_record_us(directory: str | None, fsync: str, n: int) -> tuple[float, float]:
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".jsonl") as f, \
            AuditWriter(f.name, fsync=fsync, program="bench") as w:
        def one() -> None:
            w.write("call", fn="C_Sign", args=ARGS, rv="CKR_OK", dur_us=120, src="card")

        total = min(timeit.repeat(one, number=n, repeat=3)) / n * 1e6
        body = min(timeit.repeat(lambda: w._body("call", "C_Sign", ARGS, "CKR_OK", 120, "card", None),
                                 number=n, repeat=3)) / n * 1e6
    return total, body


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else None
    for fsync, n in (("none", 20000), ("always", 500)):
        total, body = per_record_us(directory, fsync, n)
        print(f'fsync="{fsync}": {total:.1f} µs/record (redact + JSON encoding {body:.1f} µs)')


if __name__ == "__main__":
    main()
