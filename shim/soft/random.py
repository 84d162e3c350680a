"""Random bytes: the card's RNG (when it has one) XOR the OS CSPRNG.

XOR of two independent sources is at least as unpredictable as the better one,
so a weak or backdoored card RNG cannot weaken the result, and a host with a
poor entropy pool still gets the card's.  C_SeedRandom is passed to the card
when it accepts it and otherwise accepted and ignored (the OS pool cannot be
seeded from here, and mixing makes a seed unnecessary).
"""

from __future__ import annotations

import os


def mix(card_bytes: bytes | None, length: int) -> bytes:
    host = os.urandom(length)
    if not card_bytes:
        return host
    return bytes(a ^ b for a, b in zip(host, card_bytes, strict=True))
