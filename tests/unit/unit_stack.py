"""The core imported in the test process over the fake backend, and the layers composed on it.

``cabi.bind`` hands the core a test ``ffi`` and ``lib`` (tests/unit/fake_backend.py); :func:`compose`
then builds the stack exactly as :mod:`shim.runtime` does in the module.  (A module of its own, not
``conftest``: several conftest modules share that name in one pytest run.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fake_backend as fake

from shim import cabi, runtime
from shim.audit.writer import AuditWriter
from shim.call import Call, Table
from shim.constants import CKA, CKK, CKO
from shim.layers.audit import Audit
from shim.layers.base import Base
from shim.layers.completion import Completion
from shim.layers.fixups import Fixups
from shim.layers.guard import Guard

FFI = fake.make_ffi()
LIB = fake.CoreLib(FFI)
cabi.bind(FFI, LIB)

P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")


def ulong(v: int) -> bytes:
    return int(v).to_bytes(8, "little")


def add_object(ctl: Any, attrs: dict[int, bytes]) -> int:
    h = int(ctl.fake_add_object())
    for t, v in attrs.items():
        ctl.fake_set_attr(h, t, v, len(v))
    return h


def add_ec_private_key(ctl: Any, point: bytes, kid: bytes = b"\x01", label: bytes = b"fake ec") -> int:
    return add_object(ctl, {CKA.CLASS: ulong(CKO.PRIVATE_KEY), CKA.KEY_TYPE: ulong(CKK.EC), CKA.ID: kid,
                            CKA.LABEL: label, CKA.EC_PARAMS: P256_PARAMS, CKA.EC_POINT: point,
                            CKA.PRIVATE: b"\x01"})


@dataclass
class Loaded:
    """The base layer over the fake, loaded and initialised: what the layers above stand on."""

    base: Base
    table: Table

    def call(self, name: str, *args: Any) -> int:
        return self.table[name](Call(name), *args)


@dataclass
class Stack:
    """All five layers over the fake, composed as the module composes them."""

    base: Base
    completion: Completion
    fixups: Fixups
    guard: Guard
    audit: Audit
    writer: AuditWriter
    entries: dict[str, Any]
    log: Path


def compose(fake_module: Path, log: Path, *, allow: frozenset[str] | None = None,
            on_failure: str = "fail-closed", **settings: Any) -> Stack:
    # The module's writer appends through the core's C (flock, size check, write in one call);
    # the fake carries the same C, bound as shim.runtime binds it.
    writer = AuditWriter(str(log), on_failure=on_failure,
                         locked_append=runtime.locked_append_of(FFI.dlopen(str(fake_module)), FFI, str(fake_module)))
    b = Base()
    completion = Completion(b.table(), **settings)
    fixups = Fixups(completion.table(), slot_of=completion.state.sessions.slot_of)
    guard = Guard(fixups.table(), allow=allow, load_backend=lambda: b.load(str(fake_module), frozenset()),
                  on_fork=(writer.after_fork, completion.reset))
    audit = Audit(guard.table(), writer, fail_closed=on_failure == "fail-closed")
    return Stack(b, completion, fixups, guard, audit, writer, audit.entries(), log)
