"""Software completion: what a card lacks, done on the host with ``cryptography``.

One small module per supplement, each behind a narrow interface that the
handlers in ``shim/handlers/`` call.  Nothing here touches C memory or the
backend's function table directly except :mod:`shim.soft.capabilities` and
:mod:`shim.soft.pubkeys`, which ask the backend what it has.  Only operations
with a private key reach the card; everything public (verification, digests,
public key objects, HMAC with session keys, random mixing) is completed here.
See ``shim/soft/README.md``.
"""
