"""The cffi objects of the embedded core; importable only inside the module."""

from _sc4dnssec_core import ffi, lib  # type: ignore[import-not-found]  # registered by cffi at start

NULL = ffi.NULL

__all__ = ["ffi", "lib", "NULL"]
