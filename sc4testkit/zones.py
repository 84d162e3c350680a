"""The example zone every signer test signs, and a free port to serve it on.

BIND's flows (tests/bind), the installed package's named (tests/package) and the other signers
(tests/signers) sign the same kind of zone, so a difference between them is the signer's, not
the zone's.
"""

from __future__ import annotations

import socket
from pathlib import Path


def write_zone(path: Path, origin: str, names: int = 300) -> None:
    """A plain zone under ``origin``: SOA, NS, MX, then ``names`` hosts with an A each, an AAAA on
    every third and a TXT on every seventh."""
    lines = [
        "$TTL 3600",
        f"$ORIGIN {origin}.",
        "@ IN SOA ns1 hostmaster 2024010101 3600 900 604800 300",
        "@ IN NS ns1",
        "@ IN MX 10 mail",
        "ns1 IN A 127.0.0.1",
        "mail IN A 192.0.2.254",
    ]
    for i in range(1, names + 1):
        lines.append(f"host{i} IN A 192.0.2.{i % 250 + 1}")
        if i % 3 == 0:
            lines.append(f"host{i} IN AAAA 2001:db8::{i:x}")
        if i % 7 == 0:
            lines.append(f'host{i} IN TXT "host number {i}"')
    path.write_text("\n".join(lines) + "\n")


def free_port() -> int:
    """A free high port on 127.0.0.1 for both UDP and TCP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")
