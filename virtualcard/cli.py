"""``virtualcard``: run a virtual PIV card behind a private pcscd from the shell.

eval "$(virtualcard up ~/.cache/vcard)"     # provision if new, start pcscd + card, print exports
pkcs11-tool --module "$SC4DNSSEC_BACKEND" -L
virtualcard remove ~/.cache/vcard          # pull the card out (pcscd stays)
virtualcard insert ~/.cache/vcard
virtualcard status ~/.cache/vcard
virtualcard down ~/.cache/vcard            # stop card and pcscd (state stays)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .cardinfo import discover_keys
from .harness import Harness, HarnessError, opensc_module, pid_alive
from .profiles import PROFILES
from .provision import clone_piv, provision_defaults, provision_schsm, provision_slot
from .schsm import HSMState
from .state import CardState

RUN = "run"


def _harness(state_dir: Path) -> Harness:
    run = state_dir / RUN
    if not (run / "harness.json").exists():
        raise HarnessError(f"{state_dir} is not up (no {run / 'harness.json'})")
    return Harness.load(run)


def exports(state_dir: Path, h: Harness) -> str:
    module = opensc_module()
    label, keys, reader = discover_keys(module, h.env)
    if HSMState.is_schsm(state_dir):
        pin = HSMState(state_dir).counters.pin
    else:
        pin = CardState(state_dir).counters.pin
    lines = {
        "PCSCLITE_CSOCK_NAME": str(h.socket_path),
        "SC4DNSSEC_BACKEND": module,
        "VIRTUALCARD_PIN": pin,
        "VIRTUALCARD_TOKEN_LABEL": label,
        "VIRTUALCARD_READER": reader,
    }
    for name, key in sorted(keys.items()):
        lines[f"VIRTUALCARD_{name.upper()}_LABEL"] = key.label
        lines[f"VIRTUALCARD_{name.upper()}_ID"] = key.id.hex()
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in lines.items())


def cmd_up(a: argparse.Namespace) -> int:
    state_dir = Path(a.state_dir).resolve()
    is_hsm = HSMState.is_schsm(state_dir)
    if CardState(state_dir).initialised or is_hsm:
        if a.card and a.card != ("sc-hsm" if is_hsm else "piv"):
            raise HarnessError(f"{state_dir} holds a {'sc-hsm' if is_hsm else 'piv'} card, not {a.card}")
    elif a.card == "sc-hsm":
        HSMState(state_dir).manufacture(profile=a.profile or "fast")
        is_hsm = True
    else:
        provision_defaults(CardState(state_dir), profile=a.profile or "fast")
        print(f"# provisioned a new card in {state_dir}", file=sys.stderr)
    run = state_dir / RUN
    run.mkdir(parents=True, exist_ok=True)
    h = Harness.load(run) if (run / "harness.json").exists() else Harness(run, readers=a.readers)
    started_pcscd = started_card = False
    try:
        if not h.running:
            h = Harness(run, readers=a.readers)
            started_pcscd = True
            h.start(timeout=a.timeout)
        if 0 not in h.cards or not pid_alive(h.cards[0].pid, "virtualcard.vpcd"):
            h.cards.pop(0, None)
            started_card = True
            h.add_card(state_dir, 0, latency_ms=a.latency_ms, profile=a.profile)
        if is_hsm and not HSMState(state_dir).counters.initialised:
            env = {**h.env, "OPENSC_CONF": str(h.opensc_conf_for(0))}
            try:
                provision_schsm(env, HSMState(state_dir).counters.serial, opensc_module(), timeout=a.timeout * 6)
            except RuntimeError as e:
                raise HarnessError(f"personalising the SmartCard-HSM: {e}") from None
            print(f"# initialised a new SmartCard-HSM in {state_dir}", file=sys.stderr)
        deadline = time.monotonic() + a.timeout
        while True:  # pcscd reports the card before OpenSC can always bind it
            try:
                text = exports(state_dir, h)
                break
            except LookupError as e:
                if time.monotonic() > deadline:
                    raise HarnessError(f"OpenSC sees no token on the card: {e}") from None
                time.sleep(0.1)
    except BaseException:
        # stop what this command started; a pcscd or card that was already up stays up
        if started_pcscd:
            h.stop()
        elif started_card and 0 in h.cards:
            h.stop_card(0, wait=False)
        raise
    sys.stdout.write(text)
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    state_dir = Path(a.state_dir).resolve()
    if not (state_dir / RUN / "harness.json").exists():
        print(f"# {state_dir} is not up", file=sys.stderr)
        return 0
    _harness(state_dir).stop()
    return 0


def cmd_env(a: argparse.Namespace) -> int:
    state_dir = Path(a.state_dir).resolve()
    sys.stdout.write(exports(state_dir, _harness(state_dir)))
    return 0


def cmd_provision(a: argparse.Namespace) -> int:
    state_dir = Path(a.state_dir).resolve()
    state = CardState(state_dir)
    run = state_dir / RUN
    if (run / "harness.json").exists() and any(
        pid_alive(c.pid, "virtualcard.vpcd") for c in Harness.load(run).cards.values()
    ):
        raise HarnessError("card is running; `virtualcard down` first (or use yubico-piv-tool on it)")
    if not state.initialised:
        provision_defaults(state, profile=a.profile or "fast")
    if a.slot:
        cert = provision_slot(state, int(a.slot, 16), a.alg, a.cn)
        print(f"# slot {a.slot}: {a.alg} {cert.subject.rfc4514_string()}", file=sys.stderr)
    return 0


def cmd_clone(a: argparse.Namespace) -> int:
    """Start COUNT more PIV cards with the running card's keys in its pcscd (a card pool)."""
    state_dir = Path(a.state_dir).resolve()
    h = _harness(state_dir)
    if HSMState.is_schsm(state_dir):
        raise HarnessError("clone works on a PIV card (a SmartCard-HSM clones through DKEK: sc-hsm-tool)")
    source = CardState(state_dir)
    labels, readers = [], []
    for i in range(1, a.count + 1):
        clone_dir = state_dir / "clones" / f"card{i}"
        clone = CardState(clone_dir) if CardState(clone_dir).initialised else clone_piv(source, clone_dir)
        card = h.add_card(clone_dir, latency_ms=a.latency_ms)
        labels.append(f"virtualcard-{clone.counters.serial}")
        readers.append(str(card.reader))
    sys.stdout.write(f"export VIRTUALCARD_CLONE_LABELS={shlex.quote(' '.join(labels))}\n"
                     f"export VIRTUALCARD_CLONE_READERS={shlex.quote(' '.join(readers))}\n")
    return 0


def cmd_remove(a: argparse.Namespace) -> int:
    _harness(Path(a.state_dir).resolve()).remove(a.reader)
    return 0


def cmd_insert(a: argparse.Namespace) -> int:
    _harness(Path(a.state_dir).resolve()).insert(a.reader)
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    state_dir = Path(a.state_dir).resolve()
    state = CardState(state_dir)
    if HSMState.is_schsm(state_dir):
        hsm = HSMState(state_dir)
        hc = hsm.counters
        ids = ", ".join(f"{k:02X}" for k in hsm.key_ids())
        print(
            f"SmartCard-HSM serial {hc.serial} profile {hc.profile}; "
            f"{'initialised' if hc.initialised else 'NOT initialised'}; PIN tries left "
            f"{hc.pin_tries_left}/{hc.pin_retries}, SO PIN {hc.so_tries_left}; keys {ids or 'none'}"
        )
    elif not state.initialised:
        print(f"{state_dir}: no card")
        return 1
    else:
        c = state.counters
        slots = ", ".join(f"{s:02X}" for s in state.slots_with_keys())
        print(
            f"card serial {c.serial} profile {c.profile}; PIN tries left {c.pin_tries_left}/{c.pin_retries}, "
            f"PUK {c.puk_tries_left}/{c.puk_retries}; keys in {slots}"
        )
    run = state_dir / RUN
    if not (run / "harness.json").exists():
        print("down")
        return 0
    h = Harness.load(run)
    if not h.pcscd_pid and not h.cards:
        print("down")
        return 0
    print(
        f"pcscd pid {h.pcscd_pid} {'running' if h.running else 'DEAD'}; PCSCLITE_CSOCK_NAME={h.socket_path}"
    )
    for r, card in sorted(h.cards.items()):
        alive = pid_alive(card.pid, "virtualcard.vpcd")
        print(
            f"reader {r} ({h.reader_name(r)}, port {card.port}): card pid {card.pid} "
            f"{'running' if alive else 'DEAD'}, {'inserted' if card.inserted else 'removed'}"
        )
    if h.running:
        for name, present in h.reader_status().items():
            print(f"  pcscd: {name}: {'card' if present else 'empty'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="virtualcard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help)
        p.add_argument("state_dir")
        p.set_defaults(fn=fn)
        return p

    p = add("up", cmd_up, "provision if new, start pcscd + card in the background, print exports")
    p.add_argument(
        "--card", choices=("piv", "sc-hsm"), default=None,
        help="card family of a new card (default piv): the PIV card or a SmartCard-HSM (Nitrokey HSM 2)",
    )
    p.add_argument("--latency-ms", type=float, default=None, help="delay per private-key operation")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None)
    p.add_argument("--readers", type=int, default=2)
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for pcscd, its readers and the token (10)"
    )
    add("down", cmd_down, "stop card and pcscd (by PID); the card state stays")
    add("env", cmd_env, "print the export lines again")
    p = add("provision", cmd_provision, "create the card (defaults) and/or put a key + cert in a slot")
    p.add_argument("--slot", help="hex slot, e.g. 9c or 82")
    p.add_argument("--alg", default="EC:secp256r1", help="EC:secp256r1 EC:secp384r1 RSA:2048 RSA:3072")
    p.add_argument("--cn", default=None)
    p.add_argument("--profile", choices=sorted(PROFILES), default=None)
    for name, fn in (("remove", cmd_remove), ("insert", cmd_insert)):
        p = add(name, fn, f"{name} the card at run time")
        p.add_argument("--reader", type=int, default=0)
    add("status", cmd_status, "processes, readers, PIN counters")
    p = add("clone", cmd_clone, "start more PIV cards with this card's keys in its pcscd (card pool); print exports")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=None, help="delay per private-key operation")
    a = ap.parse_args(argv)
    try:
        return int(a.fn(a))
    except HarnessError as e:
        print(f"virtualcard: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
