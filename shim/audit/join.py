"""Join the signer host's audit log with the card host's, for a card served by ``p11-kit server``.

The signer's shim runs over p11-kit-client.so; the card host's shim runs inside p11-kit-remote,
which p11-kit server starts once per client connection.  So one signer process (one epoch whose
backend is p11-kit-client.so) talks to one card-host epoch whose ``prog`` is p11-kit-remote.
Connections are paired by the signatures both sides logged (``data_sha256`` of C_Sign, or
what the card must have been given when the signer's shim hashed: the digest, or its
DigestInfo for RSA PKCS#1 v1.5), then by order of C_Login, then by the card-side connection's
peer credentials when they name the signer's own process (a socket reached without ssh), and by
time only when nothing else tells them apart.  Each card-side connection is shown with its
client (the ``client`` of its load record): over ssh that is the sshd or ssh process on the card
host and the TCP connection it carries, which names the ssh connection, not the signer process.
Within a pair, signatures are paired by content in order.

What the join explains and what it cannot:

- a signature on both sides, same result: matched;
- the card signed, the signer got an error: the answer was lost on the way back (link dropped);
- the signer got an error and the card has no record: the request never reached the card;
- the signer has a successful signature the card host did not log, or the card host logged a
  successful signature no signer log asked for: *unexplained* (exit 1): a log is missing or
  incomplete, or another client used the socket.

This reads, it does not verify: run ``audit verify`` on both files.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from shim.audit.show import records, safe
from shim.spec import DIGEST_INFO_PREFIX

CLIENT_MODULE = "p11-kit-client.so"
SERVER_PROG = "p11-kit-remote"
SIGN_FNS = frozenset({"C_Sign", "C_SignFinal"})
#: Hash-then-sign mechanisms over SHA-256, by the name the signer's C_SignInit record gives,
#: and whether the card is given a DigestInfo (PKCS#1 v1.5) rather than the bare digest.
SHA256_HASHED = {"CKM_ECDSA_SHA256": False, "CKM_SHA256_RSA_PKCS": True, "CKM_SHA256_RSA_PKCS_PSS": False}


def _ts(rec: dict[str, Any]) -> float:
    return datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()


@dataclass
class Connection:
    """One epoch of one log: a process's records from one load of the shim."""

    side: str  # "signer" or "card"
    path: str
    epoch: str
    pid: int
    prog: str
    backend: str | None = None
    #: card side: the ``client`` of the load record (the connection's peer credentials, docs/remote.md)
    client: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == "call"]

    @property
    def signs(self) -> list[dict[str, Any]]:
        return [r for r in self.calls if r["fn"] in SIGN_FNS]

    def label(self) -> str:
        first = self.records[0]["ts"] if self.records else "?"
        return f"{self.side} {safe(self.prog)} pid {self.pid} epoch {self.epoch} (from {first}){self.client_text()}"

    def client_text(self) -> str:
        """Who the card host's connection came from, as its load record says; empty if it says nothing."""
        c = self.client
        if not c:
            return ""
        who = f"pid {c.get('pid')} uid {c.get('uid')}" + (f" {safe(str(c['comm']))}" if c.get("comm") else "")
        if c.get("title"):
            who += f" '{safe(str(c['title']))}'"
        if c.get("tcp"):
            who += " over " + ", ".join(safe(str(t)) for t in c["tcp"])
        return f", client {who}" + (f" on {safe(str(c['socket']))}" if c.get("socket") else "")

    def same_process(self, other: Connection) -> bool:
        """Whether this card-side connection's peer is ``other``'s process itself: the signer
        connected to the server's socket directly (same host, same pid namespace), no ssh between."""
        c = self.client or {}
        return (c.get("pid") == other.pid and isinstance(c.get("comm"), str)
                and bool(c["comm"]) and other.prog.startswith(c["comm"]))


def connections(path: str, side: str) -> list[Connection]:
    """The epochs of ``path`` in order of their first record."""
    by_epoch: dict[str, Connection] = {}
    for _off, _line, rec in records(path):
        if rec is None:
            continue
        c = by_epoch.get(rec["epoch"])
        if c is None:
            c = by_epoch[rec["epoch"]] = Connection(side, path, rec["epoch"], rec["pid"], rec["prog"])
        if rec["kind"] == "backend" and isinstance(rec["args"], dict):
            c.backend = rec["args"].get("path")
        if rec["kind"] == "load" and isinstance(rec["args"], dict) and isinstance(rec["args"].get("client"), dict):
            c.client = rec["args"]["client"]
        c.records.append(rec)
    return list(by_epoch.values())


def sign_keys(conn: Connection) -> dict[int, str]:
    """seq of each signature record -> what identifies the data it signed, as logged.

    ``data_sha256`` of a C_Sign; for a multi-part signature (C_SignInit, C_SignUpdate ...,
    C_SignFinal) the SHA-256 over its parts' ``part_sha256`` in order. p11-kit passes each part
    on as it is, so both sides log the same parts (pkcs11-provider with p11-kit 0.25 signs this
    way)."""
    parts: dict[Any, list[str]] = {}
    out: dict[int, str] = {}
    for r in conn.calls:
        args = r["args"] or {}
        session = args.get("session")
        if r["fn"] == "C_SignInit":
            parts[session] = []
        elif r["fn"] == "C_SignUpdate" and "part_sha256" in args:
            parts.setdefault(session, []).append(args["part_sha256"])
        elif r["fn"] == "C_Sign" and "data_sha256" in args:
            out[r["seq"]] = args["data_sha256"]
        elif r["fn"] == "C_SignFinal" and parts.get(session):
            out[r["seq"]] = hashlib.sha256(("parts:" + ",".join(parts[session])).encode()).hexdigest()
    return out


def card_inputs(conn: Connection) -> dict[int, set[str]]:
    """seq of each signer-side signature -> the data_sha256 values the card may have logged for it.

    The signer's shim logs what the signer gave it; when the shim hashed that itself
    (``hashed_by: soft``), the card got the digest (or its DigestInfo), whose SHA-256 follows from
    ``data_sha256`` only when the hash is SHA-256 itself."""
    mech_by_session: dict[Any, str] = {}
    keys = sign_keys(conn)
    out: dict[int, set[str]] = {}
    for r in conn.calls:
        args = r["args"] or {}
        if r["fn"] == "C_SignInit":
            mech_by_session[args.get("session")] = args.get("mechanism", "")
        if r["seq"] not in keys:
            continue
        out[r["seq"]] = cands = {keys[r["seq"]]}
        if "data_sha256" not in args:
            continue
        wrapped = SHA256_HASHED.get(mech_by_session.get(args.get("session"), ""))
        if args.get("hashed_by") == "soft" and wrapped is not None:
            digest = bytes.fromhex(args["data_sha256"])
            cands.add(hashlib.sha256(DIGEST_INFO_PREFIX["sha256"] + digest if wrapped else digest).hexdigest())
    return out


@dataclass
class Pair:
    signer: Connection
    card: Connection | None
    matched: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    signer_only: list[dict[str, Any]] = field(default_factory=list)
    card_only: list[dict[str, Any]] = field(default_factory=list)


def _match_signs(signer: Connection, card: Connection) -> Pair:
    """Pair signatures by content, keeping each side's order."""
    want = card_inputs(signer)
    have = sign_keys(card)
    pair = Pair(signer, card)
    csigns = card.signs
    j = 0
    for s in signer.signs:
        cands = want.get(s["seq"], set())
        k = next((i for i in range(j, len(csigns)) if have.get(csigns[i]["seq"]) in cands), None)
        if k is None:
            pair.signer_only.append(s)
            continue
        pair.card_only.extend(csigns[j:k])
        pair.matched.append((s, csigns[k]))
        j = k + 1
    pair.card_only.extend(csigns[j:])
    return pair


@dataclass
class Join:
    pairs: list[Pair]
    unpaired_card: list[Connection]
    clock_offset: float | None  # median card ts - signer ts over matched signatures, seconds

    @property
    def lost(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The card signed; the signer got an error."""
        return [(s, c) for p in self.pairs for s, c in p.matched if c["rv"] == "CKR_OK" and s["rv"] != "CKR_OK"]

    @property
    def unexplained(self) -> list[tuple[str, dict[str, Any]]]:
        out = [("signer", s) for p in self.pairs for s in p.signer_only if s["rv"] == "CKR_OK"]
        out += [("card", c) for p in self.pairs for c in p.card_only if c["rv"] == "CKR_OK"]
        out += [("card", c) for conn in self.unpaired_card for c in conn.signs if c["rv"] == "CKR_OK"]
        return out


def _login_order(conn: Connection) -> list[str]:
    return [r["rv"] for r in conn.calls if r["fn"] == "C_Login"]


#: A connection with no signature or login to go by is paired by time only when the card host's
#: connection starts within this many seconds of the signer process's span (after correcting for
#: the clock offset the content matches show).
TIME_SLACK = 2.0


def join(signer_paths: Iterable[str], card_path: str) -> Join:
    """Pair every signer process over p11-kit-client.so with the card host's connection it used."""
    signers = [c for p in signer_paths for c in connections(p, "signer")
               if c.records and c.backend and c.backend.rsplit("/", 1)[-1] == CLIENT_MODULE]
    cards = [c for c in connections(card_path, "card") if c.records and c.prog == SERVER_PROG]
    # Content first: the pairs with most signatures in common, then those whose logins agree.
    scored = []
    for si, s in enumerate(signers):
        for ci, c in enumerate(cards):
            n = len(_match_signs(s, c).matched)
            logins = _login_order(s)
            same_logins = bool(logins) and logins == _login_order(c)
            same_process = c.same_process(s)
            if n or same_logins or same_process:
                scored.append((n, same_logins, same_process, -abs(_ts(c.records[0]) - _ts(s.records[0])), si, ci))
    chosen: dict[int, int] = {}
    for *_key, si, ci in sorted(scored, reverse=True):
        if si not in chosen and ci not in chosen.values():
            chosen[si] = ci
    deltas = [_ts(cr) - _ts(sr) for si, ci in chosen.items() for sr, cr in _match_signs(signers[si], cards[ci]).matched]
    offset = statistics.median(deltas) if deltas else None
    # Then time, for what is left (a process that only listed slots).
    for si, s in enumerate(signers):
        if si in chosen:
            continue
        lo, hi = _ts(s.records[0]) + (offset or 0.0) - TIME_SLACK, _ts(s.records[-1]) + (offset or 0.0) + TIME_SLACK
        near = [(abs(_ts(c.records[0]) - lo - TIME_SLACK), ci) for ci, c in enumerate(cards)
                if ci not in chosen.values() and lo <= _ts(c.records[0]) <= hi]
        if near:
            chosen[si] = min(near)[1]
    pairs = [(_match_signs(s, cards[chosen[si]]) if si in chosen else Pair(s, None, signer_only=list(s.signs)))
             for si, s in enumerate(signers)]
    unpaired = [c for ci, c in enumerate(cards) if ci not in chosen.values()]
    return Join(pairs, unpaired, offset)


def _brief(r: dict[str, Any]) -> str:
    h = (r["args"] or {}).get("data_sha256", "")
    return f"seq {r['seq']} {r['fn']} {r['rv']}" + (f" data {h[:16]}" if h else "")


def render(j: Join, out: TextIO, verbose: bool = False) -> None:
    for p in j.pairs:
        if p.card is None:
            out.write(f"{p.signer.label()}\n  <-> no card host connection matches "
                      f"({len(p.signer.calls)} calls, {len(p.signer.signs)} signatures)\n")
        else:
            out.write(f"{p.signer.label()}\n  <-> {p.card.label()}: {len(p.matched)} signature(s) matched, "
                      f"{len(p.signer.calls)} calls here, {len(p.card.calls)} there\n")
        for s, c in p.matched:
            if verbose or s["rv"] != c["rv"]:
                note = "  <- signed on the card, the answer lost on the way" if c["rv"] == "CKR_OK" != s["rv"] else ""
                out.write(f"    signer {_brief(s)} = card {_brief(c)}{note}\n")
        for s in p.signer_only:
            why = "UNEXPLAINED: not in the card host's log" if s["rv"] == "CKR_OK" else "never reached the card"
            out.write(f"    signer {_brief(s)}: {why}\n")
        for c in p.card_only:
            why = "UNEXPLAINED: no signer record asked for it" if c["rv"] == "CKR_OK" else "failed on the card"
            out.write(f"    card {_brief(c)}: {why}\n")
    for conn in j.unpaired_card:
        out.write(f"{conn.label()}: no signer connection matches ({len(conn.calls)} calls, "
                  f"{sum(r['rv'] == 'CKR_OK' for r in conn.signs)} signature(s))\n")
    if j.clock_offset is not None:
        out.write(f"card host clock minus signer clock: {j.clock_offset:+.3f} s (median over matched signatures)\n")
    matched = sum(len(p.matched) for p in j.pairs)
    out.write(f"{matched} signature(s) matched, {len(j.lost)} lost on the link, "
              f"{len(j.unexplained)} unexplained\n")


def as_json(j: Join) -> str:
    def conn(c: Connection | None) -> dict[str, Any] | None:
        return None if c is None else {"path": c.path, "epoch": c.epoch, "pid": c.pid, "prog": c.prog,
                                       **({"client": c.client} if c.client is not None else {})}

    doc = {
        "pairs": [{"signer": conn(p.signer), "card": conn(p.card),
                   "matched": [[s["seq"], c["seq"]] for s, c in p.matched],
                   "signer_only": [s["seq"] for s in p.signer_only],
                   "card_only": [c["seq"] for c in p.card_only]} for p in j.pairs],
        "unpaired_card": [conn(c) for c in j.unpaired_card],
        "lost": [[s["seq"], c["seq"]] for s, c in j.lost],
        "unexplained": [[side, r["seq"]] for side, r in j.unexplained],
        "clock_offset": j.clock_offset,
    }
    return json.dumps(doc, indent=1) + "\n"
