"""The openssl.cnf that loads pkcs11-provider over the shim (``sc4dnssec openssl-cnf``, the
ceremony's BIND steps): a module of its own, so that the ceremony does not import the CLI."""

from __future__ import annotations

PROVIDER_MODULE = "/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so"


def openssl_cnf(shim_module: str, provider_module: str = PROVIDER_MODULE) -> str:
    """An openssl.cnf for BIND 9.20 + pkcs11-provider over the shim.

    Scope it to the signing processes with OPENSSL_CONF; never install it
    system-wide (dig/delv/rndc abort with an early-loading provider)."""
    return f"""# smartcards4dnssec: pkcs11-provider over the shim.
# Use ONLY as OPENSSL_CONF=<this file> for dnssec-* tools and named.
openssl_conf = openssl_init

[openssl_init]
providers = provider_sect

[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect

[default_sect]
activate = 1

[pkcs11_sect]
module = {provider_module}
pkcs11-module-path = {shim_module}
# early: with lazy loading BIND's self-check takes paths cards cannot serve
pkcs11-module-load-behavior = early
activate = 1
"""
