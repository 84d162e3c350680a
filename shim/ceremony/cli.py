"""``sc4dnssec ceremony ...``: start, status, step, run, record, verify-record, unseal.

Exit codes: 0 done; 1 a step failed (its card operations so far are recorded: run it again to
resume); 2 usage; 3 refused (a step out of order, or the ceremony is closed); 4 verify-record
found a problem.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_RECORD = 0, 1, 2, 3, 4
DEFAULT_BACKEND = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        role, sep, rest = v.partition("=")
        if not sep or not role or not rest:
            raise ValueError(f"{what}: expected ROLE=VALUE, not {v!r}")
        out.append((role, rest))
    return out


def _start(args: argparse.Namespace) -> int:
    from shim.ceremony.policy import STEPS, write_window
    from shim.ceremony.state import Ceremony, OrderError
    from shim.ceremony.steps import BIND_STEPS, shim_conf_text
    from shim.locate import module_path

    try:
        participants = [{"role": r, "name": n} for r, n in _pairs(args.participant, "--participant")]
    except ValueError as e:
        print(f"ceremony start: {e}", file=sys.stderr)
        return EXIT_USAGE
    custodians = args.custodian or ["SO", "SA"][: args.dkek_shares] + [
        f"custodian {i}" for i in range(3, args.dkek_shares + 1)]
    if len(custodians) != args.dkek_shares:
        print(f"ceremony start: {args.dkek_shares} DKEK shares need {args.dkek_shares} --custodian", file=sys.stderr)
        return EXIT_USAGE
    if args.share_password_file and len(args.share_password_file) != args.dkek_shares:
        print("ceremony start: give one --share-password-file per DKEK share, or none (asked for)", file=sys.stderr)
        return EXIT_USAGE
    if args.without_bind and not args.zsk_material:
        print("ceremony start: --without-bind needs the --zsk-material to encrypt in step encrypt-zsks",
              file=sys.stderr)
        return EXIT_USAGE
    date = args.date or time.strftime("%Y%m%d", time.gmtime())
    zone = args.zone.rstrip(".")
    label = f"ksk.{zone}.{date}"
    total = 1 + len(args.clone)
    cards = [{"role": "primary" if i == 0 else f"clone {i}", "reader": reader,
              "label": f"KSK {i + 1} of {total}"} for i, reader in enumerate([args.primary, *args.clone])]
    secret_files: dict[str, str] = {}
    for name, path in (("pin", args.pin_file), ("so_pin", args.so_pin_file),
                       ("transport", args.transport_passphrase_file)):
        if path:
            secret_files[name] = str(Path(path).resolve())
    for i, path in enumerate(args.share_password_file or [], 1):
        secret_files[f"share_{i}"] = str(Path(path).resolve())
    directory = Path(args.dir).resolve()
    plan = [s for s in STEPS if not (args.without_bind and s in BIND_STEPS)]
    audit_log = str(Path(args.audit_log).resolve()) if args.audit_log else str(directory / "audit.jsonl")
    doc = {
        "id": f"{zone}-{date}-{secrets.token_hex(4)}", "zone": zone, "date": date, "created": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "participants": participants, "cards": cards, "dkek_shares": args.dkek_shares, "custodians": custodians,
        "ksk_label": label, "ksk_id": label.encode().hex()[:8], "curve": args.curve,
        "module": args.shim_module or module_path(), "backend": args.backend, "audit_log": audit_log,
        "checkpoint_key": str(Path(args.checkpoint_key).resolve()), "secret_files": secret_files,
        "plan": plan, "zsk_material": [str(Path(p).resolve()) for p in args.zsk_material],
        "transport_recipient": str(Path(args.transport_recipient).resolve()) if args.transport_recipient else None,
        "without_bind": bool(args.without_bind), "period_days": args.period_days,
        "schedule_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "provider": args.provider,
    }
    try:
        cer = Ceremony.create(directory, doc)
    except OrderError as e:
        print(f"ceremony start: {e}", file=sys.stderr)
        return EXIT_REFUSED
    Path(cer.shim_conf).write_text(shim_conf_text(args.backend, audit_log, cer.window))
    write_window(cer.window, None)
    print(f"ceremony {doc['id']} in {directory}")
    print(f"  steps: {', '.join(plan)}")
    print(f"  the ceremony's tools load the shim with SC4DNSSEC_CONF={cer.shim_conf} (audit log {audit_log}); "
          "outside a step the card-changing functions are refused")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from shim.ceremony.state import Ceremony, OrderError

    try:
        cer = Ceremony(Path(args.dir).resolve())
    except OrderError as e:
        print(f"ceremony status: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"ceremony {cer.doc['id']} ({'closed' if cer.doc.get('closed') else 'open'}), zone {cer.doc['zone']}")
    for n, name in enumerate(cer.plan, 1):
        rng = cer.seq_range(name)
        runs = len(cer.doc["steps"].get(name, {}).get("runs", []))
        print(f"  {n}. {name:<13} {cer.status(name):<8} audit seq {f'{rng[0]}..{rng[1]}' if rng else '-':<12}"
              + (f" {runs} runs" if runs > 1 else ""))
    nxt = cer.next_step()
    print(f"next: {nxt}" if nxt else "every step is done")
    return EXIT_OK


def _run_steps(args: argparse.Namespace, names: list[str] | None) -> int:
    from shim.ceremony import record
    from shim.ceremony.cards import CardError
    from shim.ceremony.state import Ceremony, OrderError
    from shim.ceremony.transport import TransportError

    try:
        cer = Ceremony(Path(args.dir).resolve())
    except OrderError as e:
        print(f"ceremony: {e}", file=sys.stderr)
        return EXIT_USAGE
    from shim.ceremony.steps import Runner

    runner = Runner(cer)
    todo = names if names is not None else [s for s in cer.plan if cer.status(s) not in ("done", "skipped")]
    for name in todo:
        try:
            runner.run(name)
        except OrderError as e:
            print(f"ceremony step: {e}", file=sys.stderr)
            return EXIT_REFUSED
        except (CardError, TransportError, OSError, ValueError) as e:
            print(f"ceremony step {name} failed: {e}\n(what it did so far is recorded: run the step again to "
                  "resume)", file=sys.stderr)
            return EXIT_FAILED
        if name == "close":
            cer.doc["closed"] = True
            cer.save()
            out = record.render(cer)
            print(f"   ceremony record: {out.html}" + (f", {out.pdf}" if out.pdf else "") + f" ({out.pdf_note})")
    return EXIT_OK


def _step(args: argparse.Namespace) -> int:
    if args.name:
        return _run_steps(args, [args.name])
    from shim.ceremony.state import Ceremony, OrderError

    try:
        nxt = Ceremony(Path(args.dir).resolve()).next_step()
    except OrderError as e:
        print(f"ceremony step: {e}", file=sys.stderr)
        return EXIT_USAGE
    if nxt is None:
        print("ceremony step: every step is done", file=sys.stderr)
        return EXIT_REFUSED
    return _run_steps(args, [nxt])


def _run(args: argparse.Namespace) -> int:
    return _run_steps(args, None)


def _record(args: argparse.Namespace) -> int:
    from shim.ceremony import record
    from shim.ceremony.state import Ceremony, OrderError

    try:
        cer = Ceremony(Path(args.dir).resolve())
    except OrderError as e:
        print(f"ceremony record: {e}", file=sys.stderr)
        return EXIT_USAGE
    out = record.render(cer)
    print(f"{out.html}" + (f"\n{out.pdf}" if out.pdf else "") + f"\n({out.pdf_note})")
    return EXIT_OK


def _verify_record(args: argparse.Namespace) -> int:
    from shim.ceremony.record import verify_record

    try:
        check = verify_record(Path(args.record), key_path=args.key, files_dir=Path(args.files) if args.files else None,
                              log=args.log, checkpoints=args.checkpoints)
    except (OSError, ValueError) as e:
        print(f"ceremony verify-record: {e}", file=sys.stderr)
        return EXIT_USAGE
    for c in check.checked:
        print(f"checked: {c}")
    for p in check.problems:
        print(f"problem: {p}")
    print("the record, its files and the audit log agree" if check.ok else "the record does NOT match")
    return EXIT_OK if check.ok else EXIT_RECORD


def _unseal(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from shim.ceremony.transport import TransportError, unseal

    try:
        if args.key:
            key = serialization.load_pem_private_key(Path(args.key).read_bytes(), password=None)
            if not isinstance(key, X25519PrivateKey):
                raise ValueError(f"{args.key}: not an X25519 private key")
            written = unseal(Path(args.bundle), Path(args.out), private=key)
        else:
            phrase = Path(args.passphrase_file).read_text().rstrip("\n").encode()
            written = unseal(Path(args.bundle), Path(args.out), passphrase=phrase)
    except (OSError, ValueError, TransportError) as e:
        print(f"ceremony unseal: {e}", file=sys.stderr)
        return EXIT_FAILED
    for p in written:
        print(p)
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ceremony", help="the offline-KSK key ceremony on SmartCard-HSMs (docs/ceremony.md)")
    cs = p.add_subparsers(dest="ceremony_command", required=True)
    s = cs.add_parser("start", help="set up a ceremony directory: zone, cards, participants, secrets' files")
    s.add_argument("dir")
    s.add_argument("--zone", required=True)
    s.add_argument("--primary", required=True, metavar="READER", help="reader of the card the KSK is made on")
    s.add_argument("--clone", action="append", default=[], metavar="READER", help="reader of a backup card "
                                                                                   "(repeatable)")
    s.add_argument("--participant", action="append", default=[], metavar="ROLE=NAME",
                   help="a participant and role (SA, SO, SC, IW, EW, MC; repeatable)")
    s.add_argument("--dkek-shares", type=int, default=2, metavar="M", help="DKEK shares, all needed (default 2)")
    s.add_argument("--custodian", action="append", metavar="ROLE", help="who holds each share (default SO, SA)")
    s.add_argument("--share-password-file", action="append", metavar="FILE",
                   help="password of each share, in order (default: asked for)")
    s.add_argument("--pin-file", metavar="FILE", help="the cards' user PIN (default: asked for)")
    s.add_argument("--so-pin-file", metavar="FILE", help="the cards' SO PIN, 16 hex digits (default: asked for)")
    s.add_argument("--checkpoint-key", required=True, metavar="PEM",
                   help="operator Ed25519 key for the closing checkpoint (sc4dnssec audit keygen)")
    s.add_argument("--transport-passphrase-file", metavar="FILE", help="passphrase the ZSKs travel under")
    s.add_argument("--transport-recipient", metavar="PEM", help="or: the online signer's X25519 public key")
    s.add_argument("--without-bind", action="store_true", help="no BIND steps (4-6); encrypt --zsk-material")
    s.add_argument("--zsk-material", action="append", default=[], metavar="FILE", help="ZSK files to encrypt "
                                                                                        "(with --without-bind)")
    s.add_argument("--backend", default=DEFAULT_BACKEND, help="the cards' PKCS#11 module behind the shim")
    s.add_argument("--shim-module", help="the shim module pkcs11-tool loads (default: this installation's)")
    s.add_argument("--audit-log", help="default: DIR/audit.jsonl")
    s.add_argument("--date", help="YYYYMMDD of the KSK label (default: today, UTC)")
    s.add_argument("--curve", default="prime256v1", help="KSK curve (default prime256v1: algorithm 13)")
    s.add_argument("--period-days", type=int, default=90, help="the period the SKR covers (default 90)")
    s.add_argument("--provider", help="pkcs11-provider's ossl module for the BIND steps (default: Debian's)")
    s.set_defaults(func=_start)
    s = cs.add_parser("status", help="the steps, their state and audit ranges")
    s.add_argument("dir")
    s.set_defaults(func=_status)
    s = cs.add_parser("step", help="run the next step (or NAME, refused unless it is the next)")
    s.add_argument("dir")
    s.add_argument("name", nargs="?")
    s.set_defaults(func=_step)
    s = cs.add_parser("run", help="run every remaining step in order")
    s.add_argument("dir")
    s.set_defaults(func=_run)
    s = cs.add_parser("record", help="render the ceremony record again (HTML, PDF with weasyprint)")
    s.add_argument("dir")
    s.set_defaults(func=_record)
    s = cs.add_parser("verify-record", help="check a record against its files and the audit log")
    s.add_argument("record")
    s.add_argument("--key", required=True, help="the operator's Ed25519 public key (PEM)")
    s.add_argument("--files", help="directory of the produced files (default: files/ beside the record)")
    s.add_argument("--log", help="the audit log (default: the one the record names)")
    s.add_argument("--checkpoints", help="detached checkpoint file (default: LOG.checkpoints)")
    s.set_defaults(func=_verify_record)
    s = cs.add_parser("unseal", help="online side: decrypt the ZSK bundle of step encrypt-zsks")
    s.add_argument("bundle")
    s.add_argument("out")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--passphrase-file", metavar="FILE")
    g.add_argument("--key", metavar="PEM", help="the X25519 private key the bundle was sealed to")
    s.set_defaults(func=_unseal)
