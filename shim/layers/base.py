"""The bottom of the stack: every function forwarded to the backend unchanged.

Built at import from :data:`shim.functions.FUNCTIONS` (p11-kit's generated
"base" stack, without a generator): one forwarder per function the core
serves.  The backend is loaded at C_Initialize (:meth:`Base.load`); until then
a forwarder answers CKR_CRYPTOKI_NOT_INITIALIZED.  A later card-pool layer
sits directly above this one and routes to several of these.
"""

from __future__ import annotations

from collections.abc import Callable

from shim.backend import Backend
from shim.call import Call, LayerFn, Table
from shim.constants import CKR
from shim.functions import C_ONLY, FUNCTIONS

SERVED: tuple[str, ...] = tuple(f.name for f in FUNCTIONS if f.name not in C_ONLY)


def _not_loaded(*_: object) -> int:
    return int(CKR.CRYPTOKI_NOT_INITIALIZED)


class Base:
    """Forwards to one backend module; owns the loaded :class:`~shim.backend.Backend`."""

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self._fn: dict[str, Callable[..., int]] = {name: _not_loaded for name in SERVED}

    def load(self, path: str, masked: frozenset[str]) -> Backend:
        """Open the backend module once; later calls return the same one."""
        if self.backend is None:
            self.backend = Backend(path, masked)
            self._fn = self.backend.fn
        return self.backend

    def table(self) -> Table:
        return {name: self._forwarder(name) for name in SERVED}

    def _forwarder(self, name: str) -> LayerFn:
        def forward(call: Call, *args: object) -> int:
            return self._fn[name](*args)

        forward.__name__ = f"forward_{name}"
        return forward
