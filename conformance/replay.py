"""Replay a sequence through a worker and judge each step.

``instantiate`` turns a sequence into worker steps (fresh data where the sequence leaves it open);
``judge`` checks every result: the expected CKR class, the CKR allowed by the spec, the consumer's
requirements (``check``), and every signature against the card's public key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conformance import crypto
from conformance.client import Worker
from conformance.sequence import Sequence, Step, matches
from conformance.values import const, placeholder
from sc4testkit.quirks import violation
from shim.constants import CKM, CKR, MechanismFlag, name_of

DataGen = Callable[[int, str, int], bytes]  # (step index, fn, length) -> bytes


def random_data(_i: int, _fn: str, n: int) -> bytes:
    return os.urandom(n)


def digestinfo(data: bytes) -> bytes:
    return crypto.DIGESTINFO_SHA256 + hashlib.sha256(data).digest()


_DATA_FNS = ("C_Sign", "C_SignUpdate", "C_Digest", "C_DigestUpdate", "C_Verify", "C_VerifyUpdate")


def instantiate(seq: Sequence, gen: DataGen = random_data) -> list[dict[str, Any]]:
    """Worker steps: ``${data}``/bare ``data_len`` become concrete bytes (a DigestInfo for raw RSA
    over 51 bytes, since that is what every DNS signer hands CKM_RSA_PKCS)."""
    mech: dict[tuple[str, Any], str] = {}
    named: dict[str, bytes] = {}  # ${data.NAME}: the same bytes wherever the name recurs (a self-check)
    steps = []
    for i, s in enumerate(seq.steps):
        args = dict(s.args)
        if s.fn == "C_SignInit":
            mech[(s.ctx, args.get("session"))] = str(args.get("mechanism"))
        wants_data = "data_len" in args and ("data" not in args or placeholder(args["data"]) == "data")
        if wants_data and s.fn in _DATA_FNS:
            n = int(args["data_len"])
            if s.fn == "C_Sign" and mech.get((s.ctx, args.get("session"))) == "CKM_RSA_PKCS" and n == 51:
                raw = digestinfo(gen(i, s.fn, 32))
            else:
                raw = gen(i, s.fn, n)
            args["data"] = "hex:" + raw.hex()
        name = placeholder(args.get("data"))
        if name and name.startswith("data."):
            if name not in named:
                named[name] = gen(i, s.fn, int(args.get("data_len", 32)))
            args["data"] = "hex:" + named[name].hex()
        args.pop("data_sha256", None)
        steps.append({"fn": s.fn, "args": args, "ctx": s.ctx})
    return steps


@dataclass
class StepOutcome:
    index: int
    fn: str
    rv: int | None
    expected: str
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        rv = "no call" if self.rv is None else name_of(CKR, self.rv)
        return f"step {self.index + 1} {self.fn} -> {rv} (expected {self.expected}): {'; '.join(self.problems)}"


@dataclass
class Outcome:
    steps: list[StepOutcome]
    signatures: list[dict[str, Any]]  # {"index", "mechanism", "data", "sig", "key"}

    @property
    def failures(self) -> list[StepOutcome]:
        return [s for s in self.steps if s.problems]

    @property
    def first_failure(self) -> StepOutcome | None:
        f = self.failures
        return f[0] if f else None

    def summary(self) -> str:
        return "\n".join(s.describe() for s in self.failures) or "ok"


def public_keys(bindings: dict[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if "ec.point" in bindings and bindings.get("ec.params", "").lower() in crypto._CURVES:
        keys["ec"] = crypto.ec_public(bindings["ec.params"], bindings["ec.point"])
    if "rsa.modulus" in bindings:
        keys["rsa"] = crypto.rsa_public(bindings["rsa.modulus"], bindings["rsa.exponent"])
    return keys


def _key_for(mechanism: int, keys: dict[str, Any]) -> Any:
    name = CKM(mechanism).name if mechanism in CKM._value2member_map_ else ""
    return keys.get("ec") if "ECDSA" in name else keys.get("rsa") if "RSA" in name else None


def judge(seq: Sequence, steps: list[dict[str, Any]], results: list[dict[str, Any]],
          bindings: dict[str, Any]) -> Outcome:
    """Judge ``results`` of ``steps``; a CKR outside the spec is a problem unless it is a named
    quirk of the card's module (``bindings["card.module"]``, see sc4testkit.quirks)."""
    module = str(bindings.get("card.module", ""))
    keys = public_keys(bindings)
    generated: set[str] = set()
    ops: dict[tuple[str, Any], dict[str, Any]] = {}  # (ctx, session) -> active sign op
    last_digest: dict[str, bytes] = {}
    outcomes: list[StepOutcome] = []
    sigs: list[dict[str, Any]] = []
    for i, (s, st, res) in enumerate(zip(seq.steps, steps, results, strict=False)):
        rv = res.get("rv")
        o = StepOutcome(i, s.fn, rv, s.expectation)
        outcomes.append(o)
        if rv is None:
            if not (s.expectation == "any" and "unbound handle" in str(res.get("error"))):
                o.problems.append(res.get("error", "not run"))  # an optional step after a failed one is skipped
            continue
        if not matches(s.expectation, rv):
            o.problems.append(f"expected {s.expectation}")
        bad = violation(s.fn, rv, module)
        if bad:
            o.problems.append(bad)
        out = res.get("out") or {}
        o.problems += _checks(s, rv, out)
        args = st["args"]
        sk = (s.ctx, args.get("session"))
        if s.fn == "C_GenerateKeyPair":
            generated.update(str(args.get(k)) for k in ("publicKey", "privateKey"))
        if s.fn == "C_SignInit" and rv == CKR.OK:
            ops[sk] = {"mechanism": const(args["mechanism"]), "key": args.get("key"), "data": b""}
        if s.fn == "C_DigestFinal" or s.fn == "C_Digest":
            if out.get("digest"):
                last_digest[s.ctx] = bytes.fromhex(out["digest"])
        if s.fn == "C_SignUpdate" and sk in ops:
            ops[sk]["data"] += _data(args, last_digest.get(s.ctx))
        if s.fn in ("C_Sign", "C_SignFinal") and sk in ops:
            op = ops[sk]
            data = op["data"] if s.fn == "C_SignFinal" else _data(args, last_digest.get(s.ctx))
            if rv != CKR.BUFFER_TOO_SMALL and not (rv == CKR.OK and "signature" not in out):
                ops.pop(sk)  # a size query or a short buffer keeps the operation active
            if rv == CKR.OK and out.get("signature"):
                sig = bytes.fromhex(out["signature"])
                sigs.append({"index": i, "mechanism": op["mechanism"], "data": data, "sig": sig, "key": op["key"]})
                key = _key_for(op["mechanism"], keys)
                if op["key"] in generated:
                    continue
                why = crypto.verify(op["mechanism"], key, data, sig)
                if why and not why.startswith("unchecked"):
                    o.problems.append(why)
    return Outcome(outcomes, sigs)


def _data(args: dict[str, Any], last_digest: bytes | None) -> bytes:
    v = args.get("data")
    if placeholder(v) == "digest":
        return last_digest or b""
    if isinstance(v, str) and v.startswith("hex:"):
        return bytes.fromhex(v[4:])
    return bytes(int(args.get("data_len", args.get("part_len", 0))))  # Update calls: part_len


def _checks(s: Step, rv: int, out: dict[str, Any]) -> list[str]:
    """Consumer requirements from the facts files (``check`` in a record)."""
    problems: list[str] = []
    if rv != CKR.OK or not s.check:
        return problems
    c = s.check
    if "flags_include" in c:
        flags = int(out.get("flags", 0))
        missing = [f for f in c["flags_include"] if not flags & int(MechanismFlag[f.removeprefix("CKF_")])]
        if missing:
            problems.append(f"{s.args.get('mechanism')} lacks {','.join(missing)}")
    if "mechanisms_include" in c:
        have = set(out.get("mechanisms", []))
        missing = [m for m in c["mechanisms_include"] if const(m) not in have]
        if missing:
            problems.append(f"mechanism list lacks {','.join(missing)}")
    if "found" in c and len(out.get("found", [])) != int(c["found"]):
        problems.append(f"found {len(out.get('found', []))} objects, consumer needs {c['found']}")
    if "found_min" in c and len(out.get("found", [])) < int(c["found_min"]):
        problems.append(f"found {len(out.get('found', []))} objects, consumer needs >= {c['found_min']}")
    if c.get("ec_point_der"):
        v = str((out.get("values") or {}).get("CKA_EC_POINT", ""))
        raw = bytes.fromhex(v[4:]) if v.startswith("hex:") else b""
        if not (len(raw) > 3 and raw[0] == 0x04 and raw[2] == 0x04):
            problems.append("CKA_EC_POINT is not a DER OCTET STRING around an uncompressed point")
    for key in ("digest_len", "signature_len"):
        if key in c and out.get(key) != c[key]:
            problems.append(f"{key} {out.get(key)}, consumer needs {c[key]}")
    return problems


# -- card bindings -------------------------------------------------------------------------
def discover(worker: Worker, token_label: str, pin: str, key_labels: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    """Slot, labels/ids and public values of the card's keys, read through ``worker``."""
    worker.bind({"pin": pin})
    worker.reset()
    r = worker.run([{"fn": "C_Initialize", "args": {}}, {"fn": "C_GetSlotList", "args": {"tokenPresent": True}}])
    slots = r[1]["out"]["slots"]
    slot = None
    for sl in slots:
        info = worker.run([{"fn": "C_GetTokenInfo", "args": {"slot": sl}}])[0]
        if info["rv"] == 0 and info["out"].get("label") == token_label:
            slot = sl
            break
    if slot is None:
        raise LookupError(f"token {token_label!r} not in slots {slots}")
    b: dict[str, Any] = {"slot": slot, "pin": pin, "token.label": token_label}
    worker.bind({"slot": slot})
    steps: list[dict[str, Any]] = [{"fn": "C_OpenSession", "args": {"slot": "$slot", "flags": "0x4", "opened": "$s"}},
                                   {"fn": "C_Login", "args": {"session": "$s"}}]
    attrs = {"ec": ["CKA_EC_PARAMS", "CKA_EC_POINT"], "rsa": ["CKA_MODULUS", "CKA_PUBLIC_EXPONENT"]}
    for kind, (label, kid) in key_labels.items():
        b[f"{kind}.label"], b[f"{kind}.id"] = label, kid.hex()
        steps += [{"fn": "C_FindObjectsInit", "args": {"session": "$s", "template": {
                      "CKA_CLASS": "CKO_PUBLIC_KEY", "CKA_ID": kid.hex()}}},
                  {"fn": "C_FindObjects", "args": {"session": "$s", "maxObjectCount": 1, "found": [f"$pub.{kind}"]}},
                  {"fn": "C_FindObjectsFinal", "args": {"session": "$s"}}]
        for a in attrs[kind]:
            steps += [{"fn": "C_GetAttributeValue",
                       "args": {"session": "$s", "object": f"$pub.{kind}", "template": {a: None}}},
                      {"fn": "C_GetAttributeValue", "args": {"session": "$s", "object": f"$pub.{kind}",
                                                              "template": {a: "<1 bytes>"}}}]
    steps += [{"fn": "C_CloseSession", "args": {"session": "$s"}}, {"fn": "C_Finalize", "args": {}}]
    res = worker.run(steps)
    for st, r2 in zip(steps, res, strict=False):
        if st["fn"] == "C_GetAttributeValue" and r2["rv"] == 0 and "<" in str(st["args"]["template"]):
            (name, val), = r2["out"]["values"].items()
            short = {"CKA_EC_PARAMS": "ec.params", "CKA_EC_POINT": "ec.point", "CKA_MODULUS": "rsa.modulus",
                     "CKA_PUBLIC_EXPONENT": "rsa.exponent"}[name]
            b[short] = str(val)[4:]
    worker.reset()
    worker.bind(b)
    return b
