"""The client prelude the completion tests run in their PyKCS11 child processes.

A module of its own (not conftest.py): test files import it by a name that does
not collide with tests/shim/conftest.py when both directories are collected."""

from __future__ import annotations

# Shared client prelude: open a session, log in, find keys by label.
CLIENT = """
import ctypes
from sc4testkit import rawp11
import PyKCS11
from PyKCS11 import *
lib = PyKCS11.PyKCS11Lib(); lib.load(MODULE)
slot = lib.getSlotList(tokenPresent=True)[0]
s = lib.openSession(slot, CKF_SERIAL_SESSION)
s.login(PIN)
def key(label, cls):
    found = s.findObjects([(CKA_CLASS, cls), (CKA_LABEL, label)])
    assert len(found) == 1, (label, cls, found)
    return found[0]
def rv_of(fn, *a):
    try:
        fn(*a)
        return 0
    except PyKCS11.PyKCS11Error as e:
        return e.value
_, F = rawp11.load(MODULE)  # the same loaded module, for functions PyKCS11 does not wrap
U = ctypes.c_ulong
def h(x):
    return int(x.value()) if hasattr(x, "value") else int(x)
"""
