"""What each DNSSEC signer needs from a PKCS#11 module, derived from the conformance sequences.

The sequences in ``conformance/sequences/*.jsonl`` are the one description of what a consumer
calls (they are replayed on every card by ``tox -e conformance``).  This module reduces each of
them to requirements the probe can check against one token:

- ``fn``: a function that must answer CKR_OK (steps whose expectation is ``any`` are optional
  and steps expected to fail are not requirements);
- ``op``/``mechanism``: a mechanism used with C_SignInit, C_DigestInit, C_VerifyInit or
  C_GenerateKeyPair (the Update/Final/single-part calls inherit their Init's mechanism);
- ``flags``: C_GetMechanismInfo must report these flags (BIND 9.16's slot admission);
- ``listed``: C_GetMechanismList must contain these (pkcs11-provider's choice);
- ``object``/``by``: a search for a key object by these attributes must find it (a public key
  object with the private key's label or id);
- ``key``: the key type the step works on (``ec``/``rsa``), from the placeholders it uses.

The derived table is shipped as the generated module ``requirements_table.py`` (installed
systems have no sequences, and a module needs no package-data entry);
``python -m shim.probe.regenerate`` regenerates it and ``tests/probe`` fails when it is stale.
"""

from __future__ import annotations

import json
import pprint
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TABLE = Path(__file__).resolve().parent / "requirements_table.py"
SEQUENCES = Path(__file__).resolve().parent.parent.parent / "conformance" / "sequences"

#: consumer id -> (display name, sequence-name prefix).  ``--for`` takes the id.
CONSUMERS: Mapping[str, tuple[str, str]] = {
    "bind916": ("BIND 9.16 native PKCS#11", "bind916-"),
    "bind920": ("BIND 9.20 + pkcs11-provider", "bind920-"),
    "opendnssec": ("OpenDNSSEC 2.1", "opendnssec-"),
    "knot": ("Knot DNS", "knot-"),
    "powerdns": ("PowerDNS", "powerdns-"),
    "bind918": ("BIND 9.18 + libp11 engine", "bind918-"),
}

_INIT_OPS = {"C_SignInit": "sign", "C_DigestInit": "digest", "C_VerifyInit": "verify"}
_CONTINUED = {
    "C_Sign": "sign", "C_SignUpdate": "sign", "C_SignFinal": "sign",
    "C_Digest": "digest", "C_DigestUpdate": "digest", "C_DigestFinal": "digest",
    "C_Verify": "verify", "C_VerifyUpdate": "verify", "C_VerifyFinal": "verify",
}
_KEY_PLACEHOLDER = re.compile(r"\$\{(ec|rsa)\.")
_MECH_KEY = (("CKM_ECDSA", "ec"), ("RSA", "rsa"))
_KEYGEN_KEY = {"CKM_EC_KEY_PAIR_GEN": "ec", "CKM_RSA_PKCS_KEY_PAIR_GEN": "rsa"}


@dataclass(frozen=True)
class Requirement:
    fn: str
    op: str | None = None
    mechanism: str | None = None
    key: str | None = None
    flags: tuple[str, ...] = ()
    listed: tuple[str, ...] = ()
    object: str | None = None
    by: tuple[str, ...] = ()
    check: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.flags:
            return f"{self.mechanism} with {'+'.join(self.flags)}"
        if self.listed:
            return f"C_GetMechanismList lists {', '.join(self.listed)}"
        if self.object:
            return f"a {self.object} found by {'+'.join(self.by)}" + (f" ({self.key})" if self.key else "")
        if self.op:
            return f"{self.fn} {self.mechanism}"
        return self.fn


@dataclass
class SequenceRequirements:
    name: str
    consumer: str
    needs: list[str] = field(default_factory=list)
    requirements: list[Requirement] = field(default_factory=list)

    @property
    def keygen(self) -> bool:
        return "generate" in self.needs


def _needed(rec: Mapping[str, Any]) -> bool:
    expect = rec.get("expect")
    if expect is None:
        return rec.get("rv") in (None, "CKR_OK")
    return expect == "ok" or "CKR_OK" in str(expect).split("|")


def _key_of(args: Any, mechanism: str | None) -> str | None:
    found = set(_KEY_PLACEHOLDER.findall(json.dumps(args)))
    if len(found) == 1:
        return found.pop()
    if mechanism:
        for prefix, key in _MECH_KEY:
            if prefix in mechanism:
                return key
    return None


def derive(name: str, records: Iterable[Mapping[str, Any]]) -> SequenceRequirements | None:
    """The requirements of one sequence, or None when it belongs to no consumer the probe judges."""
    consumer = next((cid for cid, (_, prefix) in CONSUMERS.items() if name.startswith(prefix)), None)
    if consumer is None:
        return None
    out = SequenceRequirements(name, consumer)
    reqs: set[Requirement] = set()
    current: dict[tuple[str, str], tuple[str | None, str | None]] = {}  # (ctx, op) -> (mechanism, key)
    search: dict[str, tuple[str, tuple[str, ...], str | None]] = {}  # ctx -> the open search
    for rec in records:
        if rec.get("kind") == "meta":
            out.needs = sorted(set(out.needs) | set((rec.get("args") or {}).get("needs", [])))
            continue
        if rec.get("kind") != "call":
            continue
        fn, args, ctx = str(rec["fn"]), dict(rec.get("args") or {}), str(rec.get("ctx", "main"))
        check = dict(rec.get("check") or {})
        if fn in _INIT_OPS:
            mech = args.get("mechanism")
            key = _key_of(args, mech)
            current[(ctx, _INIT_OPS[fn])] = (mech, key)
        if fn == "C_FindObjectsInit":
            template = args.get("template") or {}
            cls = template.get("CKA_CLASS")
            by = tuple(sorted(k for k in template if k in ("CKA_LABEL", "CKA_ID")))
            search[ctx] = (str(cls), by, _key_of(template, None)) if cls in ("CKO_PUBLIC_KEY",
                                                                               "CKO_PRIVATE_KEY") else ("", (), None)
        if not _needed(rec):
            continue
        if fn in _INIT_OPS or fn in _CONTINUED:
            op = _INIT_OPS.get(fn) or _CONTINUED[fn]
            mech, key = current.get((ctx, op), (None, None))
            reqs.add(Requirement(fn, op=op, mechanism=mech, key=key))
        elif fn == "C_GenerateKeyPair":
            mech = args.get("mechanism")
            reqs.add(Requirement(fn, op="generate", mechanism=mech, key=_KEYGEN_KEY.get(str(mech))))
        elif fn == "C_GetMechanismInfo" and check.get("flags_include"):
            reqs.add(Requirement(fn, mechanism=args.get("mechanism"), flags=tuple(check["flags_include"])))
        elif fn == "C_GetMechanismList" and check.get("mechanisms_include"):
            reqs.add(Requirement(fn, listed=tuple(check["mechanisms_include"])))
        elif fn == "C_FindObjects" and (check.get("found") or check.get("found_min")) and search.get(ctx, ("",))[0]:
            cls, by, key = search[ctx]
            if by:
                reqs.add(Requirement(fn, object=cls, by=by, key=key))
            reqs.add(Requirement(fn))
        elif fn == "C_GetAttributeValue" and check.get("ec_point_der"):
            reqs.add(Requirement(fn, key="ec", check=("ec_point_der",)))
        else:
            reqs.add(Requirement(fn, key=_key_of(args, None) if fn == "C_CreateObject" else None))
    out.requirements = sorted(reqs, key=lambda r: json.dumps(asdict(r), sort_keys=True))
    return out


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield json.loads(line)


def derive_all(directory: Path = SEQUENCES) -> list[SequenceRequirements]:
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        seq = derive(path.stem, _read_jsonl(path))
        if seq is not None:
            out.append(seq)
    return out


def table_doc(seqs: list[SequenceRequirements]) -> dict[str, Any]:
    """The table as plain data (what ``requirements_table.DOC`` holds)."""
    def req(r: Requirement) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(r).items() if v not in (None, ())}

    return {
        "consumers": {cid: name for cid, (name, _) in CONSUMERS.items()},
        "sequences": [{"name": s.name, "consumer": s.consumer, "needs": s.needs,
                       "requirements": [req(r) for r in s.requirements]} for s in seqs],
    }


def render_module(doc: dict[str, Any]) -> str:
    return ('"""Generated by ``python -m shim.probe.regenerate`` from conformance/sequences/*.jsonl.\n\n'
            'Do not edit: change the sequences and regenerate."""\n\n'
            "from typing import Any\n\n"
            f"DOC: dict[str, Any] = {pprint.pformat(doc, width=110, sort_dicts=False)}\n")


def load_table() -> list[SequenceRequirements]:
    from shim.probe.requirements_table import DOC

    out = []
    for s in DOC["sequences"]:
        reqs = []
        for r in s["requirements"]:
            fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in r.items()}
            reqs.append(Requirement(**fields))
        out.append(SequenceRequirements(s["name"], s["consumer"], list(s["needs"]), reqs))
    return out


def exercised_mechanisms(seqs: Iterable[SequenceRequirements]) -> dict[str, list[str]]:
    """op -> mechanisms the probe must try (sign, digest, verify) so every requirement is observed."""
    ops: dict[str, set[str]] = {}
    for s in seqs:
        for r in s.requirements:
            if r.op in ("sign", "digest", "verify") and r.mechanism:
                ops.setdefault(r.op, set()).add(r.mechanism)
    return {op: sorted(m) for op, m in ops.items()}
