"""The audit layer, on top: one record for every call, and the fail-closed refusal.

Each entry point summarises the call's inputs (:mod:`shim.summary`), calls
the layers below, summarises what the callee wrote to its outputs, turns any
exception into a CKR (never CKR_OK, never an exception reaching the host), and
writes exactly one record.  When the record
cannot be written and the policy is fail-closed, a call that had succeeded
returns CKR_GENERAL_ERROR instead; its output buffer is zeroed and the
operation it left active in the backend is ended.

A call that changes the token's or the login state (:data:`shim.spec.STATE_CHANGING`)
cannot be undone that way: before it goes below, an ``intent`` record with its
input summary is written (write-ahead), and if that record cannot be written
under fail-closed the call is refused before anything reaches the card.  Its
``call`` record follows as for every call.

``C_Initialize`` and ``C_Finalize`` records also carry the loader's discovery counts when they
changed since the last record that did (:mod:`shim.discovery`); no other call pays for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shim import cabi
from shim.audit.writer import AuditUnavailable, AuditWriter
from shim.call import Call, Table, enter
from shim.constants import CKR, name_of
from shim.discovery import NOTED_AT, Noter
from shim.errors import PKCS11Error
from shim.functions import BY_NAME
from shim.report import report
from shim.spec import STATE_CHANGING
from shim.summary import Summariser, compile_output_summariser, compile_summariser

_RV_NAMES: dict[int, str] = {int(v): name_of(CKR, v) for v in CKR}  # name_of builds an enum member per call
_OPS = ("Sign", "SignRecover", "Verify", "VerifyRecover", "Digest", "Encrypt", "Decrypt")
_DUMMY = 32  # bytes of throwaway input: a SHA-256-sized digest every signing mechanism accepts

Entry = Callable[..., int]


class Audit:
    def __init__(self, below: Table, writer: AuditWriter, *, fail_closed: bool,
                 discovery: Noter | None = None) -> None:
        self.below = below
        self.writer = writer
        self._fail_closed = fail_closed
        self._discovery = discovery

    def entries(self) -> dict[str, Entry]:
        """The C-facing entry point of every function: raw cffi arguments in, CK_RV out."""
        return {name: self._entry(name) for name in self.below}

    # -- records ---------------------------------------------------------------------
    def record(self, kind: str, **fields: Any) -> None:
        """A record that is not a call (load, config, backend): losing it fails nothing."""
        try:
            self.writer.write(kind, **fields)
        except AuditUnavailable as e:
            report(f"audit log unavailable: {e}")

    def record_intent(self, call: Call) -> None:
        """The write-ahead record of a state-changing call; PKCS11Error if fail-closed cannot write it."""
        try:
            self.writer.write("intent", fn=call.fn, args=dict(call.args))
        except AuditUnavailable as e:
            raise PKCS11Error(CKR.GENERAL_ERROR, f"refused before the card: write-ahead record not written: {e}") \
                from None
        except Exception as e:  # noqa: BLE001 - a bug in the audit path must not reach the host
            report(f"audit intent record for {call.fn} failed: {type(e).__name__}: {e}")
            if self._fail_closed:
                raise PKCS11Error(CKR.GENERAL_ERROR, "refused before the card: write-ahead record failed") from None

    def record_call(self, call: Call, rv: int, t0: int) -> int:
        """Write the call's record; the CK_RV the caller gets (fail-closed: no record, no success)."""
        dur_us = (time.perf_counter_ns() - t0) // 1000
        rv_name = _RV_NAMES.get(rv)
        if rv_name is None:
            rv_name = name_of(CKR, rv)
        try:
            if call.error is None:
                self.writer.write_call(call.fn, call.args, rv_name, dur_us, call.src)
            else:
                self.writer.write("call", fn=call.fn, args=call.args, rv=rv_name, dur_us=dur_us,
                                  src=call.src, error=call.error)
        except Exception as e:  # noqa: BLE001 - a bug in the audit path must not reach the host
            return self._unrecorded(call, rv, e)
        return rv

    def _unrecorded(self, call: Call, rv: int, e: Exception) -> int:
        """The CK_RV of a call whose record failed with ``e``: fail-closed, no record, no success."""
        if not isinstance(e, AuditUnavailable):
            report(f"audit record for {call.fn} failed: {type(e).__name__}: {e}")
            if not self._fail_closed:
                return rv
        return int(CKR.GENERAL_ERROR) if rv == CKR.OK else rv

    # -- the entry point ---------------------------------------------------------------
    def _entry(self, name: str) -> Entry:
        spec = BY_NAME[name]
        summarise = compile_summariser(spec)
        if name in NOTED_AT and self._discovery is not None:
            summarise = _noting(summarise, self._discovery)
        summarise_outputs = compile_output_summariser(spec)
        ahead = name in STATE_CHANGING
        fn = self.below[name]
        # The (buffer, length pointer) pair a result is written to (signature, digest, plaintext...).
        out_at = next((i for i in range(len(spec.params) - 1, 0, -1)
                       if spec.params[i].ctype == "CK_ULONG_PTR" and spec.params[i - 1].ctype == "CK_BYTE_PTR"),
                      None)
        perf = time.perf_counter_ns
        rv_names, writer = _RV_NAMES, self.writer

        def entry(*args: Any) -> int:
            t0 = perf()
            call = Call(name)
            enter(call)
            rv: int
            try:
                summarise(args, call.args)
                if ahead:
                    self.record_intent(call)
                rv = fn(call, *args)
            except PKCS11Error as e:
                rv = e.rv
                call.error = e.detail or None
            except Exception as e:  # noqa: BLE001 - the host must never see a Python exception
                rv = CKR.GENERAL_ERROR
                call.error = f"{type(e).__name__}: {e}"
            if summarise_outputs is not None:
                try:
                    summarise_outputs(args, rv, call.args)
                except Exception as e:  # noqa: BLE001 - a summary bug must not change the call's result
                    call.error = call.error or f"output summary: {type(e).__name__}: {e}"
            rv_name = rv_names.get(rv)
            if call.error is None and rv_name is not None:
                # record_call's common case, inline: one frame less on every call.
                try:
                    writer.write_call(name, call.args, rv_name, (perf() - t0) // 1000, call.src)
                    return rv
                except Exception as e:  # noqa: BLE001 - a bug in the audit path must not reach the host
                    out = self._unrecorded(call, rv, e)
            else:
                out = self.record_call(call, rv, t0)
            if out != rv and rv == CKR.OK:  # fail-closed refused a call that had succeeded
                try:
                    if out_at is not None:
                        _scrub(args[out_at - 1], args[out_at])
                    self._abandon(name, args)
                except Exception:  # noqa: BLE001, S110 - best effort; the caller already gets an error
                    pass
            return out

        entry.__name__ = f"entry_{name}"
        return entry

    def _abandon(self, name: str, args: tuple[Any, ...]) -> None:
        """End the operation a refused call left active in the backend.  PKCS#11 v2.40 says an
        error ends the operation, so the caller's next C_SignInit on that session would otherwise
        get CKR_OPERATION_ACTIVE forever.  Any call other than BUFFER_TOO_SMALL ends it; results
        are thrown away and not audited (the audit log is what failed)."""
        ffi, null = cabi.ffi, cabi.NULL
        op = name[2:].removesuffix("Init").removesuffix("Update").removesuffix("Final")
        h = args[0]
        if name == "C_FindObjectsInit":
            self.below["C_FindObjectsFinal"](Call("C_FindObjectsFinal"), h)
            return
        if op not in _OPS:
            return
        single = name.endswith("Init") or name == f"C_{op}"
        if name == f"C_{op}" and args[-2] != null:  # a completed single-part call ended the operation
            return
        if name.endswith("Final") and args[-2] != null:
            return
        data = ffi.new("CK_BYTE[]", _DUMMY)
        out = ffi.new("CK_BYTE[]", 16384)
        n = ffi.new("CK_ULONG *", 16384)
        fn = f"C_{op}" if single else f"C_{op}Final"
        if op == "Verify":
            args2: tuple[Any, ...] = (h, data, _DUMMY, out, 64) if single else (h, out, 64)
        elif single:
            args2 = (h, data, _DUMMY, out, n)
        else:
            args2 = (h, out, n)
        self.below[fn](Call(fn), *args2)


def _noting(summarise: Summariser, discovery: Noter) -> Summariser:
    def with_discovery(args: tuple[Any, ...], out: dict[str, Any]) -> None:
        summarise(args, out)
        discovery.note(out)

    return with_discovery


def _scrub(buf: Any, plen: Any) -> None:
    """A refused call hands back no result: zero what the card wrote, report length 0."""
    null = cabi.NULL
    if buf != null and plen != null and 0 < plen[0] <= 1 << 20:
        cabi.ffi.memmove(buf, bytes(int(plen[0])), int(plen[0]))
    if plen != null:
        plen[0] = 0
