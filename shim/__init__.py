"""smartcards4dnssec: a PKCS#11 shim that makes smartcards usable as DNSSEC signing HSMs."""
