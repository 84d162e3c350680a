"""``python -m conformance.record AUDIT_LOG OUT.jsonl``: an audit log -> a replayable sequence.

Keeps the ``call`` records (optionally of one ``--pid``), replaces handles by symbols (``$slot``,
``$s1``, ``$o1``; outputs ``opened``/``found``/``object`` bind them), the card's labels and ids by
``${ec.label}``-style placeholders (``--key ec=LABEL:IDHEX``; without it, the key a later
C_SignInit uses decides: CKM_ECDSA* -> ec, RSA -> rsa), and signed/digested data by fresh data of
the recorded length.  Nothing secret is in an audit log to begin with; the recorder drops the
hashes of data too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from conformance.sequence import Sequence, Step, dump, read_records

_SESSION_OUT = "opened"

# Summary keys the shim adds for the auditor; they describe the shim's work, not the consumer's call.
_INFORMATIONAL = frozenset({"src", "completion", "hashed_by", "objects_destroyed", "backend_shared",
                            "derived_public_keys", "shadowed_public_keys", "card_rng", "card_seeded",
                            "derive_error"})
# Calls whose failure in the field says more about that card than about the consumer (an attribute
# the card lacks, an operation state it cannot save): replayed on another card, any answer goes.
_CARD_DEPENDENT = frozenset({"C_GetAttributeValue", "C_GetOperationState", "C_GetMechanismInfo"})

def convert(records: list[dict[str, Any]], keys: dict[str, tuple[str, str]] | None = None,
            name: str = "recorded") -> Sequence:
    calls = [r for r in records if r.get("kind") == "call" and r.get("fn")]
    keys = dict(keys or {})
    if not keys:
        keys = _infer_keys(calls)
    by_label = {lab: k for k, (lab, _) in keys.items()}
    by_id = {kid: k for k, (_, kid) in keys.items()}
    sessions: dict[int, str] = {}
    objects: dict[int, str] = {}
    pending_out: list[tuple[Step, str]] = []  # C_CopyObject/C_CreateObject forwarded without a new handle
    steps: list[Step] = []
    last_digest_session: int | None = None

    def obj(h: Any) -> Any:
        if not isinstance(h, int) or h == 0:
            return h
        if h not in objects:
            if pending_out:  # first use of a handle a creating call did not report
                st, key = pending_out.pop(0)
                objects[h] = f"$o{len(objects) + 1}"
                st.args[key] = objects[h]
            else:
                objects[h] = f"$o{len(objects) + 1}"
        return objects[h]

    other_slots = _other_slots(calls)
    for r in calls:
        fn, a = r["fn"], dict(r.get("args") or {})
        if a.get("slot") in other_slots:
            continue  # the recording host's other readers, not the consumer's work with the card
        args: dict[str, Any] = {}
        for k, v in a.items():
            if k in ("slot",):
                args[k] = "$slot"
            elif k == "session":
                args[k] = sessions.setdefault(int(v), f"$s{len(sessions) + 1}")
            elif k == _SESSION_OUT:
                args[k] = sessions.setdefault(int(v), f"$s{len(sessions) + 1}")
            elif k in ("object", "key") and fn not in ("C_CreateObject", "C_CopyObject"):
                args[k] = obj(v)
            elif k == "found":
                args[k] = [obj(h) for h in v]
            elif k.endswith("template") or k.endswith("Template"):
                args[k] = _template(v, by_label, by_id)
            elif k.endswith("_sha256") or k in _INFORMATIONAL:
                continue
            else:
                args[k] = v
        args.pop("new_object", None)
        made = a.get("new_object")  # the handle C_CreateObject/C_CopyObject returned
        if fn == "C_CreateObject":
            args["object"] = obj(made) if isinstance(made, int) else "$new"
        if fn == "C_CopyObject":
            args["object"] = obj(a.get("object"))  # the source, from the argument summary
            if isinstance(made, int):
                args["copy"] = obj(made)
        step = Step(fn, args, r.get("rv"))
        if fn in _CARD_DEPENDENT and r.get("rv") != "CKR_OK":
            step.expect = "any"  # which attributes/operation states a card has differs per card
        if fn in ("C_CopyObject", "C_CreateObject") and r.get("rv") == "CKR_OK":
            key = "copy" if fn == "C_CopyObject" else "object"
            if key not in args or args[key] == "$new":
                pending_out.append((step, key))
        if fn in ("C_DigestFinal", "C_Digest"):
            last_digest_session = a.get("session")
        if fn == "C_Sign" and last_digest_session == a.get("session") and a.get("data_len") in (20, 32, 48, 64):
            args["data"] = "${digest}"
        if fn == "C_Login":
            args.pop("pin", None)
        steps.append(step)
    progs = sorted({str(r.get("prog")) for r in calls if r.get("prog")})
    meta = {"consumer": name, "source": f"recorded by conformance.record from {', '.join(progs) or 'an audit log'}",
            "recorded": True}
    return Sequence(name, steps, meta)


def _other_slots(calls: list[dict[str, Any]]) -> set[int]:
    """Slots of the recording host other than the card's.

    The card's slot is the one sessions were opened on (else one whose token answered).  A consumer
    that walks every slot (pkcs11-tool --token-label) asks the others too, and their answers
    (CKR_TOKEN_NOT_PRESENT for an empty reader) depend on that host's readers: replayed against one
    card's ``$slot`` they would be judged as the card's."""
    def slots(fn: str, ok_only: bool) -> set[int]:
        return {a["slot"] for r in calls if r["fn"] == fn and isinstance((a := r.get("args") or {}).get("slot"), int)
                and (not ok_only or r.get("rv") == "CKR_OK")}

    card = slots("C_OpenSession", True) or slots("C_GetTokenInfo", True)
    if not card:
        return set()
    seen = {a["slot"] for r in calls if isinstance((a := r.get("args") or {}).get("slot"), int)}
    return seen - card


def _template(v: Any, by_label: dict[str, str], by_id: dict[str, str]) -> Any:
    if not isinstance(v, dict):
        return v
    out = {}
    for k, val in v.items():
        if k == "CKA_LABEL" and val in by_label:
            out[k] = f"${{{by_label[val]}.label}}"
        elif k == "CKA_ID" and val in by_id:
            out[k] = f"${{{by_id[val]}.id}}"
        elif k == "CKA_EC_POINT":
            out[k] = "${ec.point}" if val is not None else None
        elif k == "CKA_MODULUS":
            out[k] = "${rsa.modulus}" if val is not None else None
        else:
            out[k] = val
    return out


def _infer_keys(calls: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Which searched label/id is the EC and which the RSA key: the mechanism a found key signs with."""
    found_by: dict[int, dict[str, Any]] = {}
    last_tmpl: dict[int, dict[str, Any]] = {}
    keys: dict[str, tuple[str, str]] = {}
    for r in calls:
        a = r.get("args") or {}
        if r["fn"] == "C_FindObjectsInit" and isinstance(a.get("template"), dict):
            last_tmpl[a.get("session", 0)] = a["template"]
        elif r["fn"] == "C_FindObjects":
            for h in a.get("found", []):
                found_by[h] = last_tmpl.get(a.get("session", 0), {})
        elif r["fn"] == "C_SignInit" and a.get("key") in found_by:
            mech = str(a.get("mechanism"))
            kind = "ec" if "ECDSA" in mech else "rsa" if "RSA" in mech else None
            t = found_by[a["key"]]
            if kind and kind not in keys:
                keys[kind] = (str(t.get("CKA_LABEL", "\0")), str(t.get("CKA_ID", "\0")))
    return keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("audit_log", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--pid", type=int, help="only this process's records")
    p.add_argument("--name", help="sequence name (default: OUT's stem)")
    p.add_argument("--key", action="append", default=[], metavar="KIND=LABEL:IDHEX",
                   help="map a card key to ${KIND.label}/${KIND.id} (ec, rsa)")
    ns = p.parse_args(argv)
    recs = [r for r in read_records(ns.audit_log) if ns.pid is None or r.get("pid") == ns.pid]
    keys = {}
    for spec in ns.key:
        kind, _, rest = spec.partition("=")
        label, _, kid = rest.partition(":")
        keys[kind] = (label, kid.lower())
    seq = convert(recs, keys, ns.name or ns.out.stem)
    dump(seq, ns.out)
    print(f"{len(seq.steps)} calls -> {ns.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
