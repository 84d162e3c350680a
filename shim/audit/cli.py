"""``sc4dnssec audit ...``: verify, show, checkpoint, keygen.

``shim.cli`` calls ``register(sub)`` and then ``args.func(args)``, which returns
the exit code.  Standalone: ``python -m shim.audit.cli verify FILE``.

verify exit codes: 0 intact; 1 tampered (prints ``first bad record: seq N:
reason``); 3 intact except a torn last line; 2 usage or unreadable file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK, EXIT_TAMPERED, EXIT_USAGE, EXIT_TORN = 0, 1, 2, 3


def _verify(args: argparse.Namespace) -> int:
    from shim.audit import signing
    from shim.audit.verify import verify

    try:
        key = signing.load_public(args.key) if args.key else None
        r = verify(args.file, key=key, checkpoints=args.checkpoints)
    except (OSError, ValueError) as e:
        print(f"audit verify: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not r.ok:
        print(f"first bad record: seq {r.first_bad_seq}: {r.reason}"
              + (f" (line {r.first_bad_line})" if r.first_bad_line else ""))
    print(f"{r.records} records checked, seq {min(r.last_seq, 1)}..{r.last_seq}, "
          f"{len(r.epochs)} epoch(s), {r.checkpoints} checkpoint(s)"
          + (f" ({r.checkpoints_verified} signature(s) verified)" if key is not None else "")
          + (f", {r.lost_records} record(s) lost in gaps" if r.lost_records else ""))
    for t in r.recovered:
        print(f"torn line (recovered by seq {t.recovery_seq}): offset {t.offset}, {t.length} bytes, "
              f"sha256 {t.sha256}")
    if r.torn is not None:
        print(f"torn last line: offset {r.torn.offset}, {r.torn.length} bytes, sha256 {r.torn.sha256} "
              "(a writer was interrupted; the next write will close it with a recovery record)")
    if args.verbose:
        for title, counter in (("kind", r.kinds), ("fn", r.fns), ("src", r.srcs), ("rv", r.rvs)):
            print(f"{title}: " + ", ".join(f"{k}={v}" for k, v in counter.most_common()))
        print("epochs: " + ", ".join(f"{k}={v}" for k, v in r.epochs.items()))
    for w in r.warnings:
        print(f"warning: {w}")
    return r.exit_code


def _show(args: argparse.Namespace) -> int:
    from shim.audit.show import Filter, show

    flt = Filter(frozenset(args.fn), frozenset(args.rv), frozenset(args.pid), frozenset(args.kind))
    try:
        show(args.file, flt, sys.stdout, as_json=args.json)
    except BrokenPipeError:  # `| head`
        return EXIT_OK
    except OSError as e:
        print(f"audit show: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _checkpoint(args: argparse.Namespace) -> int:
    from shim.audit import signing
    from shim.audit.checkpoint import CheckpointRefused, checkpoint

    try:
        cp = checkpoint(args.file, signing.load_private(args.key), detached=args.checkpoints)
    except CheckpointRefused as e:
        print(f"audit checkpoint: refused: {e}", file=sys.stderr)
        return EXIT_TAMPERED
    except (OSError, ValueError, TypeError) as e:
        print(f"audit checkpoint: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"checkpoint seq {cp.seq} over head seq {cp.head_seq} ({cp.head_sha256}); appended to {cp.path}")
    return EXIT_OK


def _keygen(args: argparse.Namespace) -> int:
    from shim.audit import signing

    try:
        priv, pub = signing.keygen(args.dir)
    except OSError as e:
        print(f"audit keygen: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key: {priv} (keep it off the signing host)\npublic key:  {pub}")
    return EXIT_OK


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add verify/show/checkpoint/keygen under ``parser``."""
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    p = sub.add_parser("verify", help="check the hash chain, epochs and checkpoints (exit 0/1/3)")
    p.add_argument("file")
    p.add_argument("--key", help="operator Ed25519 public key (PEM): check checkpoint signatures")
    p.add_argument("--checkpoints", help="detached checkpoint file (default FILE.checkpoints)")
    p.add_argument("-v", "--verbose", action="store_true", help="counts by kind, function, src, rv, epoch")
    p.set_defaults(func=_verify)
    p = sub.add_parser("show", help="readable table of records")
    p.add_argument("file")
    p.add_argument("--fn", action="append", default=[], help="function, e.g. C_Sign (repeatable)")
    p.add_argument("--rv", action="append", default=[], help="result, e.g. CKR_OK (repeatable)")
    p.add_argument("--pid", action="append", default=[], type=int, help="process id (repeatable)")
    p.add_argument("--kind", action="append", default=[], help="record kind (repeatable)")
    p.add_argument("--json", action="store_true", help="print matching lines as they are")
    p.set_defaults(func=_show)
    p = sub.add_parser("checkpoint", help="append a signed checkpoint of the chain head")
    p.add_argument("file")
    p.add_argument("--key", required=True, help="operator Ed25519 private key (PEM)")
    p.add_argument("--checkpoints", help="detached checkpoint file (default FILE.checkpoints)")
    p.set_defaults(func=_checkpoint)
    p = sub.add_parser("keygen", help="make an operator Ed25519 key pair (PEM) in DIR")
    p.add_argument("dir")
    p.set_defaults(func=_keygen)


def register(subparsers: Any) -> None:
    """Add the ``audit`` command to the project CLI's subparsers."""
    p = subparsers.add_parser("audit", help="verify, show and checkpoint the audit log")
    add_commands(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shim.audit.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
