"""One PKCS#11 call on its way through the layers, and the calling convention.

Every layer function is ``fn(call, *c_args) -> CK_RV``: the raw cffi arguments
of the C entry point, preceded by the :class:`Call` the audit layer will record.
A layer annotates the record through it (``call.args``, ``call.src``) and
reports a refusal by returning a CKR or raising :class:`shim.errors.PKCS11Error`.
"""

from __future__ import annotations

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
