"""``sc4dnssec``: the operator's command line."""

from __future__ import annotations

import argparse
import os
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


def _probe(args: argparse.Namespace) -> int:
    import json

    from shim import probe

    unknown = [c for c in args.for_consumers if not probe.valid_for(c)]
    if unknown:
        print(f"probe: unknown consumer {', '.join(unknown)} (one of {', '.join(probe.CONSUMERS)})", file=sys.stderr)
        return probe.EXIT_USAGE
    opts = probe.Options(config=args.config, pin_source=args.pin_source, token=args.token, user=args.user,
                         for_consumers=args.for_consumers, key_dirs=args.key_dir, named_conf=args.named_conf)
    report = probe.run(opts)
    code = probe.exit_code(report, args.for_consumers)
    report["exit"] = code
    if args.json:
        sys.stdout.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    else:
        sys.stdout.write(probe.render(report))
    return code


def _config_check(args: argparse.Namespace) -> int:
    from shim import config

    path = args.file or os.environ.get("SC4DNSSEC_CONF")
    if not path:
        print("config check: no FILE and SC4DNSSEC_CONF is not set", file=sys.stderr)
        return 2
    problems = config.check(path)
    for p in problems:
        print(p)
    if not problems:
        print(f"{path}: OK")
    return 1 if any(p.error for p in problems) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sc4dnssec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("module-path", help="absolute path of the PKCS#11 module to give consumers")
    p.set_defaults(func=_module_path)
    p = sub.add_parser("openssl-cnf", help="print an openssl.cnf for BIND 9.20 + pkcs11-provider")
    p.add_argument("--module", help="shim module path (default: this installation's)")
    p.add_argument("--provider", default=PROVIDER_MODULE, help="pkcs11-provider's ossl module")
    p.set_defaults(func=_openssl_cnf)
    p = sub.add_parser("probe", help="what the configured card offers through the shim, and which signers accept it")
    p.add_argument("--config", help="configuration file (default: SC4DNSSEC_CONF)")
    p.add_argument("--pin-source", metavar="FILE", help="the PIN file the signer uses (read verbatim, like BIND)")
    p.add_argument("--token", metavar="LABEL", help="the token to log in to when the backend shows several")
    p.add_argument("--user", help="check as the signer's user (e.g. bind); needs root")
    p.add_argument("--for", dest="for_consumers", action="append", default=[], metavar="CONSUMER",
                   help="exit 1 if this consumer would fail (repeatable): bind916, bind920, opendnssec, knot, "
                        "powerdns, bind918; CONSUMER:keygen also needs key generation on the token")
    p.add_argument("--key-dir", action="append", default=[], metavar="DIR",
                   help="look for pin-value= in DIR/*.private (repeatable)")
    p.add_argument("--named-conf", action="append", default=[], metavar="FILE",
                   help="look for pin-value= in FILE (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_probe)
    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a configuration file; names the bad setting and its line")
    c.add_argument("file", nargs="?", help="the TOML file (default: SC4DNSSEC_CONF)")
    c.set_defaults(func=_config_check)
    from shim.audit import cli as audit_cli

    audit_cli.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
