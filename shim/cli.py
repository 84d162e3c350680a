"""``sc4dnssec``: the operator's command line."""

from __future__ import annotations

import argparse
import sys

from shim.locate import module_path

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


def _module_path(args: argparse.Namespace) -> int:
    print(module_path())
    return 0


def _openssl_cnf(args: argparse.Namespace) -> int:
    sys.stdout.write(openssl_cnf(args.module or module_path(), args.provider))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sc4dnssec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("module-path", help="absolute path of the PKCS#11 module to give consumers")
    p.set_defaults(func=_module_path)
    p = sub.add_parser("openssl-cnf", help="print an openssl.cnf for BIND 9.20 + pkcs11-provider")
    p.add_argument("--module", help="shim module path (default: this installation's)")
    p.add_argument("--provider", default=PROVIDER_MODULE, help="pkcs11-provider's ossl module")
    p.set_defaults(func=_openssl_cnf)
    from shim.audit import cli as audit_cli

    audit_cli.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
