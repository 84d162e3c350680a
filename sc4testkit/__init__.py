"""What the tests, the conformance suite and the benchmarks share.

Not a test directory: ``bench/`` and ``conformance/`` import it, and so do child processes
started by tests (the raw ctypes view).  It holds no tests and no fixtures.

- :mod:`sc4testkit.tokens`: the card kinds under test (the one token table);
- :mod:`sc4testkit.quirks`: CKRs real backends return outside the spec, tolerated by name;
- :mod:`sc4testkit.rawp11`: a ctypes view of a PKCS#11 module's C ABI;
- :mod:`sc4testkit.ulong`: the one CK_ULONG codec for test code;
- :mod:`sc4testkit.trixie`: the Debian 13 root (BIND 9.20 + pkcs11-provider) and the shim in it.
"""
