"""Judge each consumer's requirements against what the probe saw through the shim.

Observations come from the probe's child (what each call returned) paired with the shim's own
audit records of those calls, which say who produced each result (``src: card|soft``) and
whether the shim completed an operation (``completion``).  A requirement is met, unmet, or
unknown (the probe could not try it: no PIN, no key of that type).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shim.constants import CKK, CKO, MechanismFlag
from shim.probe.requirements import CONSUMERS, Requirement, SequenceRequirements

SUPPLEMENTS = {
    "verify": "software verification",
    "digest": "software digests",
    "hash-then-sign": "hash-then-sign (host hashes, card signs the raw mechanism)",
    "session-objects": "session public key objects kept by the shim",
    "public-key-objects": "public key objects presented by the shim for card keys",
    "random": "random numbers from the host (mixed with the card's RNG)",
    "keygen-advertised": "key-pair generation advertised for slot admission (the card cannot generate)",
    "verify-flag": "CKF_VERIFY on signing mechanisms (verification in software)",
}


@dataclass(frozen=True)
class Result:
    ok: bool | None
    supplement: str | None = None
    why: str = ""


def _int(hexval: str | None) -> int:
    return int.from_bytes(bytes.fromhex(hexval), "little") if hexval else -1


@dataclass
class Observations:
    """Everything the child and the audit log say about the chosen token."""

    calls: list[dict[str, Any]]
    mechanisms: dict[str, dict[str, Any]]
    objects: list[dict[str, Any]]
    ops: list[dict[str, Any]]
    login: str
    logged_in: bool
    random: str | None
    model: str = ""  # the token's manufacturer and model

    @classmethod
    def build(cls, child: Mapping[str, Any], audit: list[dict[str, Any]]) -> Observations:
        trace = child.get("trace", [])
        calls = []
        paired = len(audit) == len(trace)
        for i, (fn, rv, tag) in enumerate(trace):
            rec = audit[i] if paired and audit[i].get("fn") == fn else {}
            calls.append({"fn": fn, "rv": rv, "tag": tag, "src": rec.get("src"), "args": rec.get("args") or {}})
        slot = next((s for s in child.get("slots", []) if s["id"] == child.get("chosen")), None)
        mechs: dict[str, dict[str, Any]] = {}
        if slot is not None:
            for name, m in slot.get("mechanisms", {}).items():
                c = calls[m["call"]] if m.get("call") is not None and m["call"] < len(calls) else {}
                mechs[name] = {**m, "src": c.get("src")}
        ex = child.get("exercise") or {}
        # Objects the shim keeps itself (derived public keys) answer C_GetAttributeValue with src=soft.
        by_shim = {c["args"].get("object") for c in calls if c["fn"] == "C_GetAttributeValue" and c["src"] == "soft"}
        objects = [{**o, "by_shim": o["handle"] in by_shim} for o in ex.get("objects", [])]
        ops = []
        for op in ex.get("ops", []):
            tag = {"session_public_key": "session public key"}.get(op["op"]) or \
                f"{op['op']} {op.get('mechanism')}" + (" multipart" if op.get("multipart") else "")
            tagged = [c for c in calls if c["tag"] == tag]
            ops.append({**op, "calls": tagged})
            for c in tagged:  # the next op with the same tag is a separate attempt
                c["tag"] = None
        return cls(calls, mechs, objects, ops, str(ex.get("login", "")),
                   ex.get("login") == "CKR_OK", ex.get("random"),
                   " ".join((slot or {}).get("token", {}).get(k, "") for k in ("manufacturer", "model")))

    # -- objects ----------------------------------------------------------------------
    def keys(self, cls: int, key: str | None = None) -> list[dict[str, Any]]:
        kt = {"ec": int(CKK.EC), "rsa": int(CKK.RSA)}.get(key or "")
        return [o for o in self.objects
                if _int(o.get("CLASS")) == cls and (kt is None or _int(o.get("KEY_TYPE")) == kt)]

    def key_types(self) -> set[str]:
        return {k for k in ("ec", "rsa") if self.keys(int(CKO.PRIVATE_KEY), k)}

    def _op(self, op: str, mech: str | None, multipart: bool, key: str | None = None) -> dict[str, Any] | None:
        for o in self.ops:
            if o["op"] == op and o.get("mechanism") == mech and o.get("multipart", False) == multipart and \
                    (key is None or o.get("key") == key):
                return o
        return None

    def called(self, fn: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["fn"] == fn]


def _src_of(op: Mapping[str, Any], fns: Iterable[str]) -> str | None:
    for c in op.get("calls", []):
        if c["fn"] in fns and c["rv"] == "CKR_OK" and c["src"]:
            return str(c["src"])
    return None


def _completion(op: Mapping[str, Any]) -> bool:
    return any(c["fn"] == "C_SignInit" and c["args"].get("completion") for c in op.get("calls", []))


def evaluate(r: Requirement, obs: Observations) -> Result:
    if r.flags:
        m = obs.mechanisms.get(str(r.mechanism))
        if m is None or m["rv"] != "CKR_OK":
            return Result(False, why=f"{r.mechanism} is absent")
        missing = [f for f in r.flags if not m["flags"] & MechanismFlag[f.removeprefix("CKF_")]]
        if missing:
            return Result(False, why=f"{r.mechanism} lacks {', '.join(missing)}")
        if m["src"] == "soft":
            return Result(True, "keygen-advertised" if "KEY_PAIR_GEN" in str(r.mechanism) else "verify-flag")
        return Result(True)
    if r.listed:
        missing = [x for x in r.listed if not obs.mechanisms.get(x, {}).get("listed")]
        return Result(not missing, why=f"not listed: {', '.join(missing)}" if missing else "")
    if r.object:
        return _object(r, obs)
    if r.check == ("ec_point_der",):
        pubs = obs.keys(int(CKO.PUBLIC_KEY), "ec")
        if not pubs:
            return Result(None, why="no EC public key seen")
        bad = [p for p in pubs if not p.get("EC_POINT", "").startswith("04")]
        return Result(not bad, why="CKA_EC_POINT is not a DER OCTET STRING" if bad else "")
    if r.op == "generate":
        m = obs.mechanisms.get(str(r.mechanism))
        if m is None or m["rv"] != "CKR_OK" or not m["flags"] & MechanismFlag.GENERATE_KEY_PAIR:
            return Result(False, why=f"{r.mechanism} is absent")
        if m["src"] == "soft":
            return Result(False, why="the card cannot generate key pairs (generation is only advertised)")
        return Result(True)
    if r.op in ("sign", "verify", "digest"):
        return _operation(r, obs)
    if r.fn == "C_Login":
        if obs.logged_in:
            return Result(True)
        return Result(None if not obs.login.startswith("CKR_") else False, why=f"login: {obs.login}")
    if r.fn in ("C_CreateObject", "C_DestroyObject"):
        done = [o for o in obs.ops if o["op"] == "session_public_key" and (r.key is None or o.get("key") == r.key)]
        if not done:
            return Result(None, why="no public key to copy into a session object")
        ok = all(o["rv"] == "CKR_OK" for o in done)
        soft = r.fn == "C_CreateObject" and any(c["src"] == "soft" for o in done for c in o["calls"]
                                                if c["fn"] == "C_CreateObject")
        return Result(ok, "session-objects" if ok and soft else None, "" if ok else done[0]["rv"])
    if r.fn == "C_GenerateRandom":
        if obs.random is None:
            return Result(None, why="not tried")
        soft = any(c["src"] == "soft" for c in obs.called("C_GenerateRandom"))
        return Result(obs.random == "CKR_OK", "random" if soft else None, obs.random)
    calls = obs.called(r.fn)
    if not calls:
        return Result(None, why=f"{r.fn} not tried")
    return Result(any(c["rv"] == "CKR_OK" for c in calls), why=calls[-1]["rv"])


def _object(r: Requirement, obs: Observations) -> Result:
    privs = obs.keys(int(CKO.PRIVATE_KEY), r.key)
    if not privs:
        return Result(None, why=f"no {r.key or ''} private key visible".replace("  ", " "))
    if r.object == "CKO_PRIVATE_KEY":
        return Result(True)
    attrs = [b.removeprefix("CKA_") for b in r.by]
    pubs = obs.keys(int(CKO.PUBLIC_KEY))
    shim_made = False
    for priv in privs:
        match = [p for p in pubs if all(p.get(a) == priv.get(a) for a in attrs)]
        if not match:
            return Result(False, why=f"no public key object with the private key's {'+'.join(attrs)}")
        shim_made |= any(p.get("by_shim") for p in match)
    return Result(True, "public-key-objects" if shim_made else None)


def _operation(r: Requirement, obs: Observations) -> Result:
    multipart = r.fn.endswith("Update") or r.fn.endswith("Final")
    if r.op == "sign" and r.key not in obs.key_types():
        return Result(None, why=f"no {r.key} private key visible" if obs.logged_in else "not logged in")
    o = obs._op(str(r.op), r.mechanism, multipart, r.key if r.op != "digest" else None)
    if o is None:
        return Result(None, why=f"{r.op} {r.mechanism} not tried")
    if o["rv"] != "CKR_OK":
        return Result(False, why=f"{r.op} {r.mechanism}: {o['rv']}")
    if r.op == "sign":
        return Result(True, "hash-then-sign" if _completion(o) else None)
    src = _src_of(o, ("C_Verify", "C_VerifyFinal", "C_Digest", "C_DigestFinal"))
    return Result(True, r.op if src == "soft" else None)


@dataclass
class SequenceVerdict:
    name: str
    consumer: str
    keygen: bool
    status: str  # pass | fail | unverified | unavailable | no-key
    failures: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    supplements: set[str] = field(default_factory=set)


def judge_sequence(seq: SequenceRequirements, obs: Observations) -> SequenceVerdict:
    v = SequenceVerdict(seq.name, seq.consumer, seq.keygen, "pass")
    missing_keys = {k for k in ("ec", "rsa") if k in seq.needs and obs.logged_in and k not in obs.key_types()}
    for r in seq.requirements:
        res = evaluate(r, obs)
        if res.ok is False:
            v.failures.append(f"{r.describe()}: {res.why}" if res.why else r.describe())
            if r.op == "generate":
                v.status = "unavailable"
        elif res.ok is None:
            v.unknown.append(f"{r.describe()}: {res.why}" if res.why else r.describe())
        if res.ok and res.supplement:
            v.supplements.add(res.supplement)
    if missing_keys:
        v.status = "no-key"
    elif v.status == "unavailable":
        pass
    elif v.failures:
        v.status = "fail"
    elif v.unknown:
        v.status = "unverified"
    return v


@dataclass
class ConsumerVerdict:
    consumer: str
    name: str
    signing: str  # accepted | refused | unverified
    keygen: str  # available | unavailable | unverified | n/a
    supplements: list[str]
    sequences: list[SequenceVerdict]


def judge_consumers(seqs: list[SequenceRequirements], obs: Observations) -> list[ConsumerVerdict]:
    out = []
    for cid, (name, _) in CONSUMERS.items():
        verdicts = [judge_sequence(s, obs) for s in seqs if s.consumer == cid]
        signing = [v for v in verdicts if not v.keygen]
        keygen = [v for v in verdicts if v.keygen]
        statuses = {v.status for v in signing}
        if "fail" in statuses or not statuses or statuses <= {"no-key"}:
            sign = "refused"
        elif "unverified" in statuses:
            sign = "unverified"
        else:
            sign = "accepted"
        kstat = {v.status for v in keygen}
        if not keygen:
            kg = "n/a"
        elif kstat <= {"pass", "no-key"} and "pass" in kstat:
            kg = "available"
        elif "unavailable" in kstat or "fail" in kstat:
            kg = "unavailable"
        else:
            kg = "unverified"
        used = signing + (keygen if kg == "available" else [])
        supplements = sorted({s for v in used if v.status == "pass" for s in v.supplements})
        out.append(ConsumerVerdict(cid, name, sign, kg, supplements, verdicts))
    return out
