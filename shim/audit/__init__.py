"""Tamper-evident audit log: one hash-chained JSON Lines file per host (see README.md here).

The dispatcher uses ``AuditWriter`` and ``AuditUnavailable``; operators use the
``sc4dnssec audit`` commands in ``shim.audit.cli``.
"""

from shim.audit.writer import AuditUnavailable, AuditWriter

__all__ = ["AuditUnavailable", "AuditWriter"]
