"""The test kit's CK_ULONG codec agrees with the C type of this host."""

from __future__ import annotations

import ctypes

from sc4testkit import ulong


def test_encode_is_the_c_types_bytes() -> None:
    for v in (0, 1, 0x1041, 2**32, 2**64 - 1):
        assert ulong.encode(v) == bytes(ctypes.c_ulong(v))
