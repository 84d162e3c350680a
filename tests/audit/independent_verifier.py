"""A second audit log verifier, written from docs/audit-format.md alone.

It shares no code with ``shim.audit`` (only the standard library and
``cryptography`` for Ed25519), so a rule that the specification states
differently from the shipped verifier shows up as a disagreement on a test
vector.  It is deliberately plain: one pass over the lines, the checks in the
order of section 12, the first violation wins.

``python independent_verifier.py LOG [--checkpoints FILE] [--key PUB.pem] [--require-checkpoint]``
prints ``exit N seq S`` and exits N.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import re
import stat
import sys
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
KINDS = {1: {"call", "load", "config", "backend", "gap", "checkpoint", "recovery"}}
KINDS[2] = KINDS[1] | {"link"}
KINDS[3] = KINDS[2] | {"intent"}
LATEST = max(KINDS)
ORDER = ["format", "seq", "ts", "epoch", "pid", "uid", "prog", "thread", "kind", "fn", "args", "rv", "dur_us",
         "src", "error", "prev"]
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
EPOCH = re.compile(r"[0-9a-f]{16}\Z")
HEX64 = re.compile(r"[0-9a-f]{64}\Z")
DOMAIN = b"sc4dnssec-audit-checkpoint/1\n"


# -- section 3: the canonical encoding, written out rule by rule -------------------------------

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def enc_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif 0x20 <= o <= 0x7E:
            out.append(ch)
        elif o > 0xFFFF:
            o -= 0x10000
            out.append(f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}")
        else:
            out.append(f"\\u{o:04x}")
    out.append('"')
    return "".join(out)


def enc(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    if isinstance(v, str):
        return enc_str(v)
    if isinstance(v, list):
        return "[" + ",".join(enc(x) for x in v) + "]"
    assert isinstance(v, Obj)
    return "{" + ",".join(enc_str(k) + ":" + enc(x) for k, x in v.pairs) + "}"


class Obj:
    """A parsed JSON object that keeps its members in order, duplicates included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs
        self.d = dict(pairs)
        self.dup = len(self.d) != len(pairs)

    def get(self, k: str, default: Any = None) -> Any:
        return self.d.get(k, default)

    def keys(self) -> list[str]:
        return [k for k, _ in self.pairs]


def parse(b: bytes) -> Any:
    try:
        return json.loads(b.decode("utf-8"), object_pairs_hook=Obj)
    except (ValueError, UnicodeDecodeError):
        return None


def integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def record_shaped(o: Any) -> bool:
    """Section 4.1: the fields, their order and types (canonical form is checked separately)."""
    if not isinstance(o, Obj):
        return False
    want = [k for k in ORDER if k not in ("format", "error") or k in o.d]
    if o.keys() != want and list(dict.fromkeys(o.keys())) != want:
        return False
    g = o.get
    return bool(
        (("format" not in o.d) or integer(g("format")))
        and integer(g("seq")) and g("seq") >= 1
        and isinstance(g("ts"), str) and TS.match(g("ts"))
        and isinstance(g("epoch"), str) and EPOCH.match(g("epoch"))
        and all(integer(g(k)) for k in ("pid", "uid", "thread"))
        and isinstance(g("prog"), str)
        and g("kind") in KINDS[LATEST]
        and (g("fn") is None or isinstance(g("fn"), str))
        and (g("kind") not in ("call", "intent") or isinstance(g("fn"), str))
        and (g("args") is None or isinstance(g("args"), Obj))
        and (g("rv") is None or isinstance(g("rv"), str))
        and (g("dur_us") is None or integer(g("dur_us")))
        and g("src") in (None, "card", "soft")
        and ("error" not in o.d or isinstance(g("error"), str))
        and isinstance(g("prev"), str) and HEX64.match(g("prev")))


def h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# -- the pass ----------------------------------------------------------------------------------

@dataclass
class Verdict:
    exit: int
    seq: int | None = None
    why: str = ""


class Bad(Exception):
    def __init__(self, seq: int | None, why: str, code: int = 1) -> None:
        self.seq, self.why, self.code = seq, why, code


def args_of(o: Obj) -> Obj:
    a = o.get("args")
    return a if isinstance(a, Obj) else Obj([])


def check_sig(pub: Any, a: Any) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    need = ("head_seq", "head_sha256", "signed_at", "key_id", "sig")
    if any(a.get(k) is None for k in need) or a.get("alg") != "ed25519":
        return False
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if a.get("key_id") != h(raw)[:16]:
        return False
    stmt = DOMAIN + ("{" + ",".join(enc_str(k) + ":" + enc(a.get(k))
                                    for k in sorted(("head_seq", "head_sha256", "key_id", "signed_at"))) + "}"
                     ).encode("ascii")
    try:
        pub.verify(base64.b64decode(a.get("sig"), validate=True), stmt)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def run(data: bytes, detached: list[Any], pub: Any) -> tuple[int, dict[int, tuple[str, Obj]], int, int, int]:
    """Returns (last seq, {seq: (line hash, record)}, records, first seq, checked checkpoints)."""
    parts = data.split(b"\n")
    complete, tail = parts[:-1], parts[-1]
    offsets, off = [], 0
    for p in complete:
        offsets.append(off)
        off += len(p) + 1
    objs = [parse(b) for b in complete]
    shaped = [record_shaped(o) for o in objs]
    exp_seq, exp_prev, first_seq = 1, GENESIS, 1
    last_rec_hash = GENESIS
    owner: dict[str, tuple[Any, Any, Any]] = {}
    version: dict[str, int] = {}
    pid_epoch: dict[Any, str] = {}
    epoch_first: dict[str, int] = {}
    seen_epochs: set[str] = set()
    by_seq: dict[int, tuple[str, Obj]] = {}
    n_records = 0
    region_start: int | None = None
    i = 0
    while i < len(complete):
        line, o = complete[i], objs[i]
        if not shaped[i]:
            if region_start is None:
                region_start = i
            i += 1
            continue
        seq, kind = o.get("seq"), o.get("kind")
        lh = h(line)
        if region_start is not None:  # section 8
            region = b"\n".join(complete[region_start:i])
            a = args_of(o)
            if kind != "recovery":
                raise Bad(exp_seq, "non-record line")
            if (a.get("torn_offset") != offsets[region_start] or a.get("torn_len") != len(region)
                    or a.get("torn_sha256") != h(region) or a.get("after_sha256") != last_rec_hash
                    or o.get("prev") != h(region)):
                raise Bad(seq, "recovery does not match")
            exp_prev = h(region)
            region_start = None
        elif kind == "recovery":
            raise Bad(seq, "recovery without torn region")
        # section 3: canonical encoding
        if o.dup or enc(o).encode("ascii") != line:
            raise Bad(seq, "not canonical")
        # section 9: a link as the first record
        if n_records == 0 and kind == "link" and i == 0:
            a = args_of(o)
            hs, hh = a.get("old_head_seq"), a.get("old_head_sha256")
            if not (integer(hs) and hs >= 1 and isinstance(hh, str) and HEX64.match(hh)):
                raise Bad(seq, "link without head")
            if seq != hs + 1 or o.get("prev") != hh:
                raise Bad(seq, "link does not chain")
            exp_seq, exp_prev, first_seq = hs + 1, hh, hs + 1
        # section 6: seq
        epoch = o.get("epoch")
        if seq != exp_seq:
            if seq < exp_seq and epoch in seen_epochs:
                raise Bad(seq, "replayed")
            raise Bad(exp_seq, "seq out of place")
        # section 6: prev
        if o.get("prev") != exp_prev:
            if seq == 1:
                raise Bad(seq, "first record not at genesis")
            nxt = objs[i + 1] if i + 1 < len(objs) else None
            if isinstance(nxt, Obj) and nxt.get("prev") != lh:
                raise Bad(seq, "modified")
            if epoch not in seen_epochs:
                chain = lh
                for j in range(i + 1, len(complete)):
                    if not isinstance(objs[j], Obj) or objs[j].get("prev") != chain:
                        raise Bad(seq, "spliced")
                    chain = h(complete[j])
            raise Bad(seq - 1, "previous modified")
        # section 7: epochs
        who = (o.get("pid"), o.get("uid"), o.get("prog"))
        if owner.setdefault(epoch, who) != who:
            raise Bad(seq, "epoch owner")
        cur = pid_epoch.get(who[0])
        if cur != epoch:
            if epoch in seen_epochs:
                raise Bad(epoch_first[cur] if cur is not None else seq, "pid back to an old epoch")
            pid_epoch[who[0]] = epoch
            epoch_first[epoch] = seq
        # section 5: versions; 4.2: kinds
        if epoch not in version:
            v = o.get("format", 1)
            if "format" in o.d and (v == 1 or v not in KINDS):
                raise Bad(seq, "unsupported", 5)
            version[epoch] = v
        elif "format" in o.d:
            raise Bad(seq, "format on a later record")
        if kind not in KINDS[version[epoch]]:
            raise Bad(seq, "kind not in version")
        if kind == "link" and n_records:
            raise Bad(seq, "link in the middle")
        a = args_of(o)
        if kind == "checkpoint":
            if a.get("head_seq") != seq - 1 or a.get("head_sha256") != o.get("prev"):
                raise Bad(seq, "checkpoint head")
            if pub is not None and not check_sig(pub, a):
                raise Bad(seq, "checkpoint signature")
        if kind == "gap" and not (integer(a.get("lost")) and a.get("lost") >= 1):
            raise Bad(seq, "gap count")
        seen_epochs.add(epoch)
        by_seq[seq] = (lh, o)
        n_records += 1
        exp_seq, exp_prev, last_rec_hash = seq + 1, lh, lh
        i += 1
    if region_start is not None and not tail:
        raise Bad(exp_seq, "non-record lines at the end")
    return exp_seq - 1, by_seq, n_records, first_seq, 0


def verify(path: str, checkpoints: str | None = None, key: str | None = None,
           require_checkpoint: bool = False) -> Verdict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return Verdict(2, None, "not a regular file")
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
        finally:
            os.close(fd)
        cp = checkpoints if checkpoints is not None else path + ".checkpoints"
        detached: list[Any] = []
        if checkpoints is not None or os.path.exists(cp):
            with open(cp, "rb") as f:
                detached = [json.loads(x) for x in f if x.strip()]
        pub = None
        if key:
            from cryptography.hazmat.primitives import serialization

            with open(key, "rb") as f:
                pub = serialization.load_pem_public_key(f.read())
    except (OSError, ValueError) as e:
        return Verdict(2, None, str(e))
    torn = not data.endswith(b"\n") and len(data) > 0
    try:
        last, by_seq, _, first_seq, _ = run(data, detached, pub)
        checked = 0
        for e in detached:  # section 10
            if e["seq"] < first_seq:
                continue
            if pub is not None and not check_sig(pub, Obj(list(e.items()))):
                raise Bad(e["seq"], "detached signature")
            for s, want in ((e["head_seq"], e.get("head_sha256")), (e["seq"], e.get("line_sha256"))):
                if s not in by_seq:
                    raise Bad(last + 1, "truncated")
                if by_seq[s][0] != want:
                    raise Bad(s, "rewritten")
            rec = by_seq[e["seq"]][1]
            if rec.get("kind") != "checkpoint" or args_of(rec).get("sig") != e.get("sig"):
                raise Bad(e["seq"], "detached does not match")
            checked += 1
    except Bad as b:
        return Verdict(b.code, b.seq, b.why)
    if require_checkpoint and (pub is None or checked == 0):
        return Verdict(4, None, "no checkpoint proves the log")
    return Verdict(3 if torn else 0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--checkpoints")
    ap.add_argument("--key")
    ap.add_argument("--require-checkpoint", action="store_true")
    a = ap.parse_args()
    v = verify(a.log, a.checkpoints, a.key, a.require_checkpoint)
    print(f"exit {v.exit} seq {v.seq} {v.why}")
    return v.exit


if __name__ == "__main__":
    sys.exit(main())
