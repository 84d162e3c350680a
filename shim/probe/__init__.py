"""``sc4dnssec probe``: what the configured card looks like through the shim, and who accepts it.

The probe loads the installed ``libsc4dnssec.so`` in a child process (``shim.probe.exercise``)
exactly as a signer does; the shim loads the configured backend.  The child's calls are
recorded by the shim in a private audit log, so the card-or-software answer for every result
comes from the shim itself.  Requirements per consumer come from the conformance sequences
(``shim.probe.requirements``); host-side traps from ``shim.probe.checks``.

The probe writes its audit records to a temporary log, not the configured one: run as root it
would otherwise create the production log owned by root, which is itself one of the traps.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shim import config as config_mod
from shim.constants import CKK, CKO, MechanismFlag, TokenFlag
from shim.locate import module_path
from shim.probe import checks
from shim.probe.requirements import CONSUMERS, exercised_mechanisms, load_table
from shim.probe.verdict import SUPPLEMENTS, ConsumerVerdict, Observations, judge_consumers

EXIT_OK, EXIT_FAILS, EXIT_USAGE, EXIT_UNVERIFIED = 0, 1, 2, 3


@dataclass
class Options:
    config: str | None = None
    pin_source: str | None = None
    token: str | None = None
    user: str | None = None
    for_consumers: list[str] = field(default_factory=list)
    key_dirs: list[str] = field(default_factory=list)
    named_conf: list[str] = field(default_factory=list)
    module: str | None = None
    polkit_help: str | None = None  # tests: the text of `pcscd --help`
    polkit_rule_dirs: list[str] | None = None
    env: dict[str, str] | None = None


def _child(module: str, env: dict[str, str], request: dict[str, Any], user: str | None,
           workdir: str) -> tuple[dict[str, Any], str]:
    kwargs: dict[str, Any] = {}
    if user and os.geteuid() == 0 and user != "root":
        kwargs = checks.as_user(user)
    try:
        proc = subprocess.run([sys.executable, "-m", "shim.probe.exercise"], input=json.dumps(request) + "\n",
                              capture_output=True, text=True, env=env, cwd=workdir, timeout=300, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        who = f" as user {user}" if kwargs else ""
        return {"error": f"could not run {sys.executable}{who}: {e}. The signer's user needs this Python "
                         "installation too: the shim embeds it"}, ""
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    stderr = "\n".join(ln for ln in proc.stderr.splitlines() if ln.strip())[-2000:]
    if not lines:
        return {"error": f"the probe's child exited with status {proc.returncode}"}, stderr
    return json.loads(lines[-1]), stderr


def _pool_events(path: str) -> list[dict[str, Any]]:
    """The card pool's events (``backend`` records with a ``pool`` member) of the probe's run."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("kind") == "backend" and isinstance(rec.get("args"), dict) and "pool" in rec["args"]:
                    out.append(rec["args"])
    except OSError:
        pass
    return out


def _pool_report(events: list[dict[str, Any]], warn: list[checks.Finding]) -> dict[str, Any]:
    """Each member's last state, and the private keys only some members hold (from the last login's
    picture): what an operator must know before trusting the pool to fail over."""
    members: dict[str, str] = {}
    partial: list[dict[str, Any]] = []
    for e in events:
        if e.get("member") and e["pool"] in ("join", "leave", "timeout", "refused"):
            members[str(e["member"])] = {"join": "up", "leave": "absent", "timeout": "hung"}.get(e["pool"], "refused")
        if e["pool"] == "partial_keys":
            partial = list(e.get("keys", []))
    for k in partial:
        warn.append(checks.Finding("pool", f"key id {k['id']} is on members {', '.join(k['on']) or 'none'} only: "
                                           "the others cannot take over its signatures"))
    for name, state in members.items():
        if state != "up":
            warn.append(checks.Finding("pool", f"member {name} is {state}"))
    return {"members": members, "partial_keys": partial}


def _audit_calls(path: str) -> list[dict[str, Any]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("kind") == "call":
                    out.append(rec)
    except OSError:
        pass
    return out


def _public_key(obj: dict[str, Any], certs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How an operator recognises the key: its public key (SPKI SHA-256) and certificate subject."""
    out: dict[str, Any] = {}
    cert = certs.get(obj.get("ID", ""))
    if cert and cert.get("VALUE"):
        try:
            c = x509.load_der_x509_certificate(bytes.fromhex(cert["VALUE"]))
            out["certificate"] = c.subject.rfc4514_string()
            after = getattr(c, "not_valid_after_utc", None) or c.not_valid_after  # cryptography < 42
            out["not_after"] = after.isoformat()
            spki = c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            out["spki_sha256"] = hashlib.sha256(spki).hexdigest()
        except ValueError:
            out["certificate"] = "unparseable"
    if "spki_sha256" not in out:
        spki_der = _spki(obj)
        if spki_der:
            out["spki_sha256"] = hashlib.sha256(spki_der).hexdigest()
    return out


def _spki(obj: dict[str, Any]) -> bytes | None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        if obj.get("MODULUS") and obj.get("PUBLIC_EXPONENT"):
            n = int(obj["MODULUS"], 16)
            e = int(obj["PUBLIC_EXPONENT"], 16)
            return rsa.RSAPublicNumbers(e, n).public_key().public_bytes(Encoding.DER,
                                                                         PublicFormat.SubjectPublicKeyInfo)
        if obj.get("EC_POINT") and obj.get("EC_PARAMS"):
            point = bytes.fromhex(obj["EC_POINT"])
            if point[:1] == b"\x04" and len(point) > 2 and point[2] == 0x04:
                point = point[2:] if point[1] < 0x80 else point[3:]
            curves = {"06082a8648ce3d030107": ec.SECP256R1(), "06052b81040022": ec.SECP384R1()}
            curve = curves.get(obj["EC_PARAMS"])
            if curve is None:
                return None
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
            return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except ValueError:
        return None
    return None


def _flag_names(flags: int) -> list[str]:
    return [f.name for f in MechanismFlag if f.name and f & flags and f.name in (
        "HW", "SIGN", "VERIFY", "DIGEST", "GENERATE_KEY_PAIR", "ENCRYPT", "DECRYPT", "DERIVE")]


def _mechanism_rows(obs: Observations, wanted: set[str]) -> list[dict[str, Any]]:
    rows = []
    for name, m in sorted(obs.mechanisms.items()):
        if not m["listed"] and name not in wanted:
            continue
        if m["rv"] != "CKR_OK":
            source = "absent"
        else:
            sign_ops = [o for o in obs.ops if o["op"] == "sign" and o.get("mechanism") == name and o["rv"] == "CKR_OK"]
            other = [o for o in obs.ops if o["op"] in ("digest", "verify") and o.get("mechanism") == name
                     and o["rv"] == "CKR_OK"]
            soft_other = any(c["src"] == "soft" for o in other for c in o["calls"])
            if sign_ops and any(any(c["fn"] == "C_SignInit" and c["args"].get("completion") for c in o["calls"])
                                for o in sign_ops):
                source = "software hash + card"
            elif soft_other and not sign_ops:
                source = "software"
            elif m["src"] == "card":
                source = "card"
            elif sign_ops:
                source = "card (+ software verify)"
            elif "KEY_PAIR_GEN" in name and m["src"] == "soft":
                source = "advertised only"
            else:
                source = "software"
        rows.append({"mechanism": name, "listed": m["listed"], "flags": _flag_names(int(m["flags"])),
                     "source": source, "dnssec": name in wanted})
    return rows


def _keys(obs: Observations) -> list[dict[str, Any]]:
    certs = {o.get("ID", ""): o for o in obs.objects if o.get("CLASS") and
             int.from_bytes(bytes.fromhex(o["CLASS"]), "little") == CKO.CERTIFICATE}
    out = []
    for o in obs.objects:
        cls = int.from_bytes(bytes.fromhex(o.get("CLASS", "ff")), "little")
        if cls not in (CKO.PRIVATE_KEY, CKO.PUBLIC_KEY, CKO.CERTIFICATE):
            continue
        kt = int.from_bytes(bytes.fromhex(o.get("KEY_TYPE", "ff")), "little") if "KEY_TYPE" in o else None
        entry: dict[str, Any] = {
            "class": {CKO.PRIVATE_KEY: "private key", CKO.PUBLIC_KEY: "public key",
                      CKO.CERTIFICATE: "certificate"}[CKO(cls)],
            "label": bytes.fromhex(o.get("LABEL", "")).decode("utf-8", "replace"),
            "id": o.get("ID", ""),
            "type": "" if kt is None else {int(CKK.EC): "EC", int(CKK.RSA): "RSA"}.get(kt, hex(kt)),
        }
        if cls == CKO.PUBLIC_KEY and o.get("by_shim"):
            entry["presented_by"] = "shim"
        if cls in (CKO.PRIVATE_KEY, CKO.PUBLIC_KEY):
            pub = next((p for p in obs.objects if p.get("ID") == o.get("ID") and p.get("CLASS") and
                        int.from_bytes(bytes.fromhex(p["CLASS"]), "little") == CKO.PUBLIC_KEY), o)
            entry.update(_public_key(pub, certs))
        elif cls == CKO.CERTIFICATE:
            entry.update(_public_key({"ID": o.get("ID")}, certs))
        out.append(entry)
    order = {"private key": 0, "public key": 1, "certificate": 2}
    return sorted(out, key=lambda k: (k["id"], order[k["class"]]))


def run(opts: Options) -> dict[str, Any]:
    """The whole report as a JSON-able dict (no PIN anywhere in it)."""
    warn: list[checks.Finding] = []
    report = _run(opts, warn)
    report["warnings"] = [asdict(w) for w in warn]
    return report


def _run(opts: Options, warn: list[checks.Finding]) -> dict[str, Any]:
    env = dict(os.environ if opts.env is None else opts.env)
    if opts.config:
        env["SC4DNSSEC_CONF"] = opts.config
    report: dict[str, Any] = {"slots": [], "consumers": [], "mechanisms": [], "keys": []}
    try:
        conf = config_mod.load(env)
    except config_mod.ConfigError as e:
        warn.append(checks.Finding("config", str(e)))
        return report
    user = opts.user
    report["config"] = {"source": conf.source, "backend": conf.backend, "audit": conf.audit_path,
                        "on_failure": conf.audit_on_failure}
    if not conf.backend:
        warn.append(checks.Finding("backend", "no backend configured: set backend = \"/path/module.so\" in "
                                                   "the config file or SC4DNSSEC_BACKEND"))
    elif not os.path.isfile(conf.backend):
        warn.append(checks.Finding("backend", f"backend {conf.backend} does not exist"))
    pin: str | None = None
    if opts.pin_source:
        pin, ws = checks.pin_file(opts.pin_source)
        warn += ws
    warn += checks.pin_value_files(opts.key_dirs, opts.named_conf)
    signer = user or pwd.getpwuid(os.getuid()).pw_name
    rule_dirs = [Path(d) for d in opts.polkit_rule_dirs] if opts.polkit_rule_dirs \
        is not None else checks.POLKIT_RULE_DIRS
    warn += checks.polkit(conf.backend, signer, opts.polkit_help, rule_dirs)
    warn += checks.audit_writable(conf.audit_path, user)
    if user:
        needed = [("pin-source", opts.pin_source)] if opts.pin_source else []
        needed += [("config", conf.source)] if conf.source != "defaults" else []
        warn += checks.readable_by(user, needed)
    if not conf.backend or not os.path.isfile(conf.backend):
        report["consumers"] = [_unreached(cid) for cid in CONSUMERS]
        return report

    seqs = load_table()
    ops = exercised_mechanisms(seqs)
    extra = sorted({r.mechanism for s in seqs for r in s.requirements if r.mechanism} | {
        m for ms in ops.values() for m in ms})
    workdir = tempfile.mkdtemp(prefix="sc4probe-")
    try:
        audit = os.path.join(workdir, "audit.jsonl")
        if user and os.geteuid() == 0 and user != "root":
            ids = checks.as_user(user)
            os.chown(workdir, int(ids["user"]), int(ids["group"]))  # type: ignore[call-overload]
        env["SC4DNSSEC_AUDIT_LOG"] = audit
        request: dict[str, Any] = {"module": opts.module or module_path(), "pin": pin, "token": opts.token, "ops": ops,
                   "mechanisms": extra}
        child, stderr = _child(request["module"], env, request, user, workdir)
        request["pin"] = None
        calls = _audit_calls(audit)
        pool_events = _pool_events(audit)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if pin is not None:
        stderr = stderr.replace(pin, "<pin>")
    report["initialize"] = child.get("initialize") or child.get("load_error") or child.get("error")
    if conf.pool is not None:
        report["pool"] = _pool_report(pool_events, warn)
    if child.get("initialize") != "CKR_OK":
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else report["initialize"]
        warn.append(checks.Finding("backend", f"the backend did not start through the shim: {detail}"))
        report["consumers"] = [_unreached(cid) for cid in CONSUMERS]
        return report
    report["library"] = child.get("info")
    for s in child.get("slots", []):
        tok = s.get("token")
        report["slots"].append({"id": s["id"], "description": s.get("description", ""),
                                "token": None if tok is None else {k: tok[k] for k in ("label", "manufacturer",
                                                                                      "model", "serial")},
                                "chosen": s["id"] == child.get("chosen")})
    if not [s for s in child.get("slots", []) if s.get("token")]:
        warn.append(checks.Finding("backend", "the backend answers but shows no token: is the card in the "
                                                   "reader, and can this user reach pcscd?"))
    if child.get("chosen") is None and any(s.get("token") for s in child.get("slots", [])):
        warn.append(checks.Finding("token", "several tokens: name the signer's one with --token LABEL "
                                                 "(the probe logs in on one token only)"))
    obs = Observations.build(child, calls)
    if len(calls) != len(child.get("trace", [])):
        warn.append(checks.Finding("audit", f"the shim recorded {len(calls)} calls for the probe's "
                                            f"{len(child.get('trace', []))}: card/software attribution is missing"))
    ex = child.get("exercise") or {}
    report["login"] = ex.get("login")
    if ex.get("login") not in (None, "CKR_OK", "no PIN given"):
        warn.append(checks.Finding("login", f"login: {ex['login']}"))
    chosen = next((s for s in child.get("slots", []) if s["id"] == child.get("chosen")), None)
    if chosen:
        tflags = int(chosen["token"]["flags"])
        if tflags & TokenFlag.USER_PIN_COUNT_LOW and not tflags & TokenFlag.USER_PIN_LOCKED:
            warn.append(checks.Finding("pin-count", "the token reports wrong PINs entered: few retries are left"))
        key_ids = [o.get("ID", "") for o in obs.objects]
        warn += checks.piv_invisible(obs.model, key_ids)
    wanted = set(extra)
    report["mechanisms"] = _mechanism_rows(obs, wanted)
    report["keys"] = _keys(obs)
    report["consumers"] = [_consumer(v) for v in judge_consumers(seqs, obs)]
    return report


def _unreached(cid: str) -> dict[str, Any]:
    return {"consumer": cid, "name": CONSUMERS[cid][0], "signing": "refused", "keygen": "unverified",
            "supplements": [], "why": ["the backend is not reachable"], "sequences": {}}


def _consumer(v: ConsumerVerdict) -> dict[str, Any]:
    why = [f for s in v.sequences if not s.keygen and s.status == "fail" for f in s.failures]
    unknown = [f for s in v.sequences if not s.keygen and s.status == "unverified" for f in s.unknown]
    return {"consumer": v.consumer, "name": v.name, "signing": v.signing, "keygen": v.keygen,
            "supplements": [SUPPLEMENTS[s] for s in v.supplements], "why": sorted(set(why)),
            "unverified": sorted(set(unknown)),
            "sequences": {s.name: s.status for s in v.sequences}}


def exit_code(report: dict[str, Any], names: list[str]) -> int:
    if not names:
        return EXIT_OK
    """``names`` are consumer ids, ``ID:keygen`` to require key generation on the token too."""
    by = {c["consumer"]: c for c in report["consumers"]}
    states = []
    for n in names:
        cid, _, what = n.partition(":")
        c = by.get(cid, {})
        states.append({"accepted": "ok", "refused": "fails"}.get(c.get("signing", "refused"), "unverified"))
        if what == "keygen":
            states.append({"available": "ok", "unavailable": "fails", "n/a": "fails"}.get(c.get("keygen", "n/a"),
                                                                                          "unverified"))
    if "fails" in states or not report["consumers"]:
        return EXIT_FAILS
    if "unverified" in states:
        return EXIT_UNVERIFIED
    return EXIT_OK


def valid_for(name: str) -> bool:
    cid, sep, what = name.partition(":")
    return cid in CONSUMERS and (not sep or what == "keygen")


def render(report: dict[str, Any]) -> str:
    out: list[str] = []
    conf = report.get("config", {})
    if conf:
        out.append(f"config: {conf['source']}  backend: {conf['backend']}  audit log: {conf['audit']}")
    lib = report.get("library") or {}
    if lib:
        out.append(f"through the shim: {lib.get('description', '')} ({lib.get('manufacturer', '')}), "
                   f"Cryptoki {lib.get('cryptoki', '')}")
    if report["slots"]:
        out.append("\nslots")
        for s in report["slots"]:
            tok = s["token"]
            desc = f"token {tok['label']!r} ({tok['manufacturer']} {tok['model']}, serial {tok['serial']})" \
                if tok else "no token"
            out.append(f"  {s['id']}: {s['description']}: {desc}" + ("  <- probed" if s["chosen"] else ""))
    pool = report.get("pool")
    if pool:
        out.append("\ncard pool: " + ", ".join(f"{n} {st}" for n, st in pool["members"].items()))
        for k in pool["partial_keys"]:
            out.append(f"  key id {k['id']} only on {', '.join(k['on']) or 'no member'}")
    if report["keys"]:
        out.append("\nkeys")
        for k in report["keys"]:
            extra = []
            if k.get("certificate"):
                extra.append(f"cert {k['certificate']} until {k.get('not_after', '?')[:10]}")
            if k.get("spki_sha256"):
                extra.append(f"spki sha256 {k['spki_sha256'][:16]}")
            if k.get("presented_by"):
                extra.append("presented by the shim")
            out.append(f"  {k['class']:<11} {k['type']:<3} id {k['id'] or '-':<4} {k['label']!r}  " + "; ".join(extra))
    if report["mechanisms"]:
        shown = [m for m in report["mechanisms"] if m["dnssec"]]
        out.append(f"\nmechanisms signers use (through the shim; {len(report['mechanisms']) - len(shown)} more "
                   "in --json)")
        for m in shown:
            out.append(f"  {m['mechanism']:<28} {m['source']:<26} {'+'.join(m['flags'])}"
                       + ("" if m["listed"] else "  (not listed)"))
    if report["consumers"]:
        out.append("\nconsumers")
        for c in report["consumers"]:
            kg = "" if c["keygen"] == "n/a" else f"; key generation on the token: {c['keygen']}"
            out.append(f"  {c['name']:<30} {c['signing']}{kg}")
            for s in c["supplements"]:
                out.append(f"      relies on: {s}")
            for w in c.get("why", []):
                out.append(f"      fails: {w}")
            for w in c.get("unverified", [])[:3]:
                out.append(f"      not verified: {w}")
    if report["warnings"]:
        out.append("\nwarnings")
        for w in report["warnings"]:
            out.append(f"  {w.get('level', 'warning')} [{w['code']}] {w['message']}")
    return "\n".join(out) + "\n"
