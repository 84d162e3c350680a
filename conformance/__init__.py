"""Consumer call sequences x cards: replay, hypothesis properties, a stateful token model.

See README.md.  Sequences are JSON Lines in the shim's audit-record shape (kind "call", fn, args,
rv) with symbolic handles and ``${...}`` placeholders, so a field audit log converts with
``python -m conformance.record``.
"""
