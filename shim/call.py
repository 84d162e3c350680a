"""One PKCS#11 call on its way through the layers, and the calling convention.

Every layer function is ``fn(call, *c_args) -> CK_RV``: the raw cffi arguments
of the C entry point, preceded by the :class:`Call` the audit layer will record.
A layer annotates the record through it (``call.args``, ``call.src``) and
reports a refusal by returning a CKR or raising :class:`shim.errors.PKCS11Error`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

LayerFn = Callable[..., int]
Table = dict[str, LayerFn]  # function name -> the layer function serving it


class Call:
    """What one PKCS#11 call did, as the audit record will say it."""

    __slots__ = ("fn", "args", "src", "error")

    def __init__(self, fn: str) -> None:
        self.fn = fn
        self.args: dict[str, Any] = {}
        self.src: str | None = None  # "card" | "soft": who produced a cryptographic result
        self.error: str | None = None


INTERNAL = Call("internal")  # for the shim's own backend calls (probes, attribute reads): never recorded


_current = threading.local()


def enter(call: Call) -> None:
    """The audit layer names the application's call this thread is serving (see :func:`recorded`)."""
    _current.call = call


def recorded(call: Call) -> Call:
    """The call whose record a layer below completion annotates: completion hands the card half of
    a call down as :data:`INTERNAL`, but what the card did (which pool member) belongs in the
    application's record.  A throwaway Call when the thread serves none (never INTERNAL itself)."""
    if call is not INTERNAL:
        return call
    outer = getattr(_current, "call", None)
    return outer if outer is not None else Call("internal")
