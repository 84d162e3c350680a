"""Operator-facing problems: stderr and syslog, because the audit log may be the problem."""

from __future__ import annotations

import sys


def report(message: str) -> None:
    print(f"smartcards4dnssec: {message}", file=sys.stderr, flush=True)
    try:
        import syslog

        syslog.syslog(syslog.LOG_ERR, f"smartcards4dnssec: {message}")
    except Exception:  # noqa: BLE001 - reporting must not fail the caller
        pass
