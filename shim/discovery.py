"""The discovery calls the C loader answers alone, as the audit log records them.

``C_GetFunctionList``, ``C_GetInterfaceList`` and ``C_GetInterface`` never reach Python: a host
can call them before anything starts, and often does so several times.  The loader counts them
(``shim/c/discovery.h``) and the core reads the counts, so each process's ``load`` record says
which of them the host called, how often, and which interface it asked for.  Counts that change
after the load (a host that calls ``C_GetFunctionList`` again before re-initialising) show up on
the next ``C_Initialize`` or ``C_Finalize`` record.  The summary's shape is in
docs/audit-format.md (section 4.4).
"""

from __future__ import annotations

from typing import Any, Final

from shim import cabi
from shim.audit.schema import DISCOVERY

#: The classes of a C_GetInterface request, in the loader's index order (shim/c/stub.c):
#: ``interface[name * len(VERSIONS) + version]``.
NAMES: Final = ("any", "PKCS 11", "other")
VERSIONS: Final = ("any", "2.40", "3.x", "other")
#: The call records that carry the summary again when the counts changed since the last record.
NOTED_AT: Final = frozenset({"C_Initialize", "C_Finalize"})


def counts() -> dict[str, Any] | None:
    """The summary of the discovery calls so far, or None when the core was loaded without the
    loader (a unit test's stand-in)."""
    read = getattr(cabi.lib, "sc4_discovery_read", None)
    if read is None:
        return None
    raw = cabi.ffi.new("struct sc4_discovery *")
    if not read(raw):
        return None
    asked = [{"name": name, "version": version, "calls": int(raw.interface[i * len(VERSIONS) + j])}
             for i, name in enumerate(NAMES) for j, version in enumerate(VERSIONS)
             if raw.interface[i * len(VERSIONS) + j]]
    return {"C_GetFunctionList": int(raw.function_list), "C_GetInterfaceList": int(raw.interface_list),
            "C_GetInterface": sum(a["calls"] for a in asked), "interfaces_asked": asked,
            "flags_asked": int(raw.flags), "refused": int(raw.refused)}


class Noter:
    """Adds the summary to a record's ``args`` when it differs from the one last recorded."""

    def __init__(self) -> None:
        self._last: dict[str, Any] | None = None

    def initial(self) -> dict[str, Any] | None:
        """For the ``load`` record: the counts at load, which later records compare against."""
        self._last = counts()
        return self._last

    def note(self, args: dict[str, Any]) -> None:
        now = counts()
        if now is not None and now != self._last:
            self._last = now
            args[DISCOVERY] = now
