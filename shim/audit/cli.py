"""``sc4dnssec audit ...``: verify, show, checkpoint, keygen, export, join.

``shim.cli`` calls ``register(sub)`` and then ``args.func(args)``, which returns
the exit code.  Standalone: ``python -m shim.audit.cli verify FILE``.

verify exit codes: 0 intact; 1 tampered (prints ``first bad record: seq N:
reason``); 2 usage or unreadable file; 3 intact except a torn last line; 4
intact but ``--require-checkpoint`` and no signed checkpoint proved it; 5 a
format version this verifier does not know.  Every run also prints what it
could not prove (``not proven: ...``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK, EXIT_TAMPERED, EXIT_USAGE, EXIT_TORN, EXIT_UNPROVEN, EXIT_UNSUPPORTED = 0, 1, 2, 3, 4, 5


def _verify(args: argparse.Namespace) -> int:
    from shim.audit import signing
    from shim.audit.verify import verify_files

    if args.manifest:
        if args.file or args.checkpoints:
            print("audit verify: --manifest checks the archive's own files; give no FILE or --checkpoints",
                  file=sys.stderr)
            return EXIT_USAGE
        return _verify_manifest(args)
    if not args.file:
        print("audit verify: give FILE (oldest first if several rotated files) or --manifest", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = signing.load_public(args.key) if args.key else None
        results = verify_files(args.file, key=key, checkpoints=args.checkpoints,
                               require_checkpoint=args.require_checkpoint)
    except (OSError, ValueError) as e:
        print(f"audit verify: {e}", file=sys.stderr)
        return EXIT_USAGE
    codes = []
    for path, r in zip(args.file, results, strict=True):
        if len(args.file) > 1:
            print(f"== {path}")
        codes.append(_print_result(r, key is not None, args.verbose))
    bad = [c for c in codes if c not in (EXIT_OK, EXIT_TORN)]
    return max(bad) if bad else max(codes)


def _verify_manifest(args: argparse.Namespace) -> int:
    from shim.audit import signing
    from shim.audit.archive import verify_manifest

    try:
        key = signing.load_public(args.key) if args.key else None
        m = verify_manifest(args.manifest, key=key, require_checkpoint=args.require_checkpoint)
    except (OSError, ValueError) as e:
        print(f"audit verify: {e}", file=sys.stderr)
        return EXIT_USAGE
    for p in m.problems:
        print(f"archive: {p}")
    if m.result is not None:
        _print_result(m.result, key is not None, args.verbose)
    if not m.problems:
        print("archive: every file matches the manifest")
    return m.exit_code


def _print_result(r: Any, keyed: bool, verbose: bool) -> int:
    if r.unsupported is not None:
        print(f"unsupported: seq {r.first_bad_seq}: {r.reason}")
    elif not r.ok:
        print(f"first bad record: seq {r.first_bad_seq}: {r.reason}"
              + (f" (line {r.first_bad_line})" if r.first_bad_line else ""))
    print(f"{r.records} records checked, seq {r.first_seq if r.records else 0}..{r.last_seq}, "
          f"{len(r.epochs)} epoch(s), {r.checkpoints} checkpoint(s)"
          + (f" ({r.checkpoints_verified} signature(s) verified)" if keyed else "")
          + (f", {r.lost_records} record(s) lost in gaps" if r.lost_records else ""))
    for t in r.recovered:
        print(f"torn line (recovered by seq {t.recovery_seq}): offset {t.offset}, {t.length} bytes, "
              f"sha256 {t.sha256}")
    if r.torn is not None:
        print(f"torn last line: offset {r.torn.offset}, {r.torn.length} bytes, sha256 {r.torn.sha256} "
              "(a writer was interrupted; the next write will close it with a recovery record)")
    if r.version_starts:
        print("format version(s): " + ", ".join(f"{v} from seq {s}" for s, v in r.version_starts))
    if r.link is not None:
        print(f"starts with a link to a rotated file's head: seq {r.first_seq - 1} ({r.link.get('old_head_sha256')})")
    if verbose:
        for title, counter in (("kind", r.kinds), ("fn", r.fns), ("src", r.srcs), ("rv", r.rvs)):
            print(f"{title}: " + ", ".join(f"{k}={v}" for k, v in counter.most_common()))
        print("epochs: " + ", ".join(f"{k}={v}" for k, v in r.epochs.items()))
    for w in r.warnings:
        print(f"warning: {w}")
    for u in r.unproven:
        print(f"not proven: {u}")
    if r.proof_required:
        print("error: --require-checkpoint: no signed checkpoint (with --key and the checkpoint file) "
              "proves this log")
    return int(r.exit_code)


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


def _export(args: argparse.Namespace) -> int:
    from shim.audit import signing
    from shim.audit.archive import ExportRefused, export

    try:
        key = signing.load_public(args.key) if args.key else None
        m = export(args.file, args.to, checkpoints=args.checkpoints, key=key)
    except ExportRefused as e:
        print(f"audit export: refused: {e}", file=sys.stderr)
        return EXIT_TAMPERED
    except (OSError, ValueError) as e:
        print(f"audit export: {e}", file=sys.stderr)
        return EXIT_USAGE
    log = m["log"]
    print(f"exported {log['records']} records (seq {log['first_seq']}..{log['last_seq']}, head {log['head_sha256']}, "
          f"format {', '.join(map(str, log['format_versions']))}) and {len(m['checkpoints'])} checkpoint(s) "
          f"to {args.to}; check it with: sc4dnssec audit verify --manifest {args.to}/manifest.json")
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


def _join(args: argparse.Namespace) -> int:
    from shim.audit.join import as_json, join, render

    try:
        j = join(args.signer_log, args.card_log)
    except (OSError, ValueError) as e:
        print(f"audit join: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        sys.stdout.write(as_json(j))
    else:
        render(j, sys.stdout, args.verbose)
    return EXIT_TAMPERED if j.unexplained else EXIT_OK


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add verify/show/checkpoint/export/keygen under ``parser``."""
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    p = sub.add_parser("verify", help="check encoding, hash chain, epochs, versions, checkpoints (exit 0-5)")
    p.add_argument("file", nargs="*", help="the log; several rotated files oldest first")
    p.add_argument("--key", help="operator Ed25519 public key (PEM): check checkpoint signatures")
    p.add_argument("--checkpoints", help="detached checkpoint file (default FILE.checkpoints)")
    p.add_argument("--require-checkpoint", action="store_true",
                   help="fail (exit 4) unless a signed checkpoint, checked with --key, proves the log")
    p.add_argument("--manifest", help="check an 'audit export' archive: its manifest.json or directory")
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
    p = sub.add_parser("export", help="copy the log, its checkpoints and a manifest into DIR for the archive")
    p.add_argument("file")
    p.add_argument("--to", required=True, metavar="DIR", help="new or empty directory")
    p.add_argument("--checkpoints", help="detached checkpoint file (default FILE.checkpoints)")
    p.add_argument("--key", help="operator public key: check the signatures before exporting")
    p.set_defaults(func=_export)
    p = sub.add_parser("join", help="pair a signer host's log with the card host's (remote card, docs/remote.md); "
                                    "exit 1 if a signature is on one side only")
    p.add_argument("signer_log", nargs="+", help="the signer host's log(s)")
    p.add_argument("card_log", help="the card host's log (p11-kit server's shim)")
    p.add_argument("--json", action="store_true", help="the pairs by seq, machine-readable")
    p.add_argument("-v", "--verbose", action="store_true", help="list every matched signature")
    p.set_defaults(func=_join)
    p = sub.add_parser("keygen", help="make an operator Ed25519 key pair (PEM) in DIR")
    p.add_argument("dir")
    p.set_defaults(func=_keygen)


def register(subparsers: Any) -> None:
    """Add the ``audit`` command to the project CLI's subparsers."""
    p = subparsers.add_parser("audit", help="verify, show, checkpoint and export the audit log")
    add_commands(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shim.audit.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
