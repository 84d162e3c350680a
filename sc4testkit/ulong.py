"""CK_ULONG values as attribute bytes, for test code outside ``shim/`` (templates, mechanism parameters).

PKCS#11 attribute values of type CK_ULONG are the C type's native bytes; on the LP64 hosts
this project supports that is 8 bytes, host byte order.  The shim core has its own codec in
``shim/``; test code uses this one so that it does not load the cffi core.
"""

from __future__ import annotations

import ctypes
import sys

SIZE = ctypes.sizeof(ctypes.c_ulong)


def encode(value: int) -> bytes:
    """The attribute bytes of CK_ULONG ``value``."""
    return int(value).to_bytes(SIZE, sys.byteorder)

