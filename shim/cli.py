"""``sc4dnssec``: the operator's command line."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from shim.locate import module_path
from shim.openssl_conf import PROVIDER_MODULE, openssl_cnf


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


def _remote_serve(args: argparse.Namespace) -> int:
    from shim import remote

    try:
        sock = args.socket or remote.default_socket()
        env = remote.serve_env(os.environ, args.backend)
        argv = remote.serve_argv(args.module or module_path(), sock, args.token or [remote.ALL_TOKENS],
                                 user=args.user, group=args.group)
        if args.dry_run:
            print(shlex.join(argv))
            return 0
        remote.prepare_socket_dir(sock)
    except remote.RemoteError as e:
        print(f"remote serve: {e}", file=sys.stderr)
        return 2
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"remote serve: {argv[0]}: {e} (apt-get install p11-kit)", file=sys.stderr)
        return 2


def _remote_env(args: argparse.Namespace) -> int:
    import json

    from shim import remote

    try:
        sock = args.socket or remote.default_socket()
        env = remote.client_env(sock, args.client_module)
    except remote.RemoteError as e:
        print(f"remote env: {e}", file=sys.stderr)
        return 2
    fwd = remote.Forward(sock, args.card_socket or sock, args.alive_interval, args.alive_count)
    local, back = fwd.local(args.card_host), fwd.remote(args.signer_host)
    if args.format == "json":
        doc = {"env": env, "module": args.module or module_path(), "ssh_local": local, "ssh_remote": back}
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    elif args.format == "systemd":
        sys.stdout.write(remote.systemd_lines(env))
    else:
        sys.stdout.write(remote.sh_lines(env))
        sys.stdout.write(f"# the signer loads the shim as usual: {args.module or module_path()}\n"
                         f"# forward the card's socket, from this host:\n#   {shlex.join(local)}\n"
                         f"# or from the card host (this host's sshd: StreamLocalBindUnlink yes):\n"
                         f"#   {shlex.join(back)}\n")
    return 0


def _add_remote(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from shim import remote

    p = sub.add_parser("remote", help="the card on another host, through p11-kit server and ssh (docs/remote.md)")
    rsub = p.add_subparsers(dest="remote_command", required=True)
    r = rsub.add_parser("serve", help="card host: export the shim over the card's module with p11-kit server")
    r.add_argument("--backend", metavar="MODULE", help="the card's PKCS#11 module (default: SC4DNSSEC_BACKEND "
                                                        "or the configuration file)")
    r.add_argument("--socket", metavar="PATH", help="the server's unix socket (default: "
                                                    "$XDG_RUNTIME_DIR/sc4dnssec/card.sock, root: /run/sc4dnssec/)")
    r.add_argument("--token", action="append", metavar="URI", help="export only this token (repeatable; "
                                                                   f"default {remote.ALL_TOKENS!r}, every slot)")
    r.add_argument("--user", help="p11-kit server --user: who may connect to the socket")
    r.add_argument("--group", help="p11-kit server --group: which group may connect to the socket")
    r.add_argument("--module", help="shim module path (default: this installation's)")
    r.add_argument("--dry-run", action="store_true", help="print the p11-kit command instead of running it")
    r.set_defaults(func=_remote_serve)
    r = rsub.add_parser("env", help="signer host: the shim's environment and the ssh forwarding command")
    r.add_argument("--socket", metavar="PATH", help="the forwarded socket on this host (default as for serve)")
    r.add_argument("--card-socket", metavar="PATH", help="the server's socket on the card host (default: --socket)")
    r.add_argument("--card-host", default="CARD-HOST", help="ssh destination of the card host (for -L)")
    r.add_argument("--signer-host", default="SIGNER-HOST", help="ssh destination of this host (for -R)")
    r.add_argument("--alive-interval", type=int, default=remote.ALIVE_INTERVAL, metavar="SECONDS",
                   help="ssh ServerAliveInterval: how often ssh checks the link")
    r.add_argument("--alive-count", type=int, default=remote.ALIVE_COUNT, metavar="N",
                   help="ssh ServerAliveCountMax: unanswered checks before ssh drops the link")
    r.add_argument("--client-module", help="p11-kit-client.so (default: found under /usr/lib)")
    r.add_argument("--module", help="shim module path (default: this installation's)")
    r.add_argument("--format", choices=("sh", "systemd", "json"), default="sh")
    r.set_defaults(func=_remote_env)


def _drop_openssl_conf() -> None:
    """Forget OPENSSL_CONF before anything initialises OpenSSL in this process.

    An operator runs these commands with the signer's environment (``sc4dnssec probe`` with named's
    drop-in), whose OPENSSL_CONF loads pkcs11-provider over the shim.  OpenSSL reads it when it is
    first initialised, which here is the first ``import hashlib``: the provider would then load the
    shim into this interpreter, in the middle of importing the shim's own modules (the embedded
    start fails on a partially initialised ``shim.audit.writer``), and every child would do the
    same.  No command needs a provider: the probe loads the module itself, in its child."""
    os.environ.pop("OPENSSL_CONF", None)


def main(argv: list[str] | None = None) -> int:
    _drop_openssl_conf()
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
    _add_remote(sub)
    from shim.audit import cli as audit_cli

    audit_cli.register(sub)
    from shim.ceremony import cli as ceremony_cli

    ceremony_cli.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
