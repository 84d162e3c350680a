"""Make the audit-format test vectors: small logs, each with the verdict the specification gives it.

``python tests/audit/vectors/make_vectors.py`` rewrites ``tests/audit/vectors/`` (the logs, their
detached checkpoint files, ``vectors.json`` and the public key; the private key is thrown away).
Each vector's expected verdict is written here by hand, from docs/audit-format.md; the script
refuses to write a vector on which ``shim.audit.verify`` disagrees, and CI checks that the
independent verifier agrees too (test_audit_vectors.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2])]

from shim.audit import schema, signing  # noqa: E402
from shim.audit.verify import verify  # noqa: E402
from shim.audit.writer import AuditWriter  # noqa: E402

Lines = list[bytes]


def parse(line: bytes) -> dict[str, Any]:
    r = schema.parse_line(line)
    assert r is not None
    return r


def rechain(lines: Lines, start: int) -> Lines:
    out = list(lines[:start])
    for line in lines[start:]:
        r = parse(line)
        r["prev"] = schema.line_hash(out[-1]) if out else schema.GENESIS
        out.append(schema.encode_line(r))
    return out


def v1(lines: Lines) -> Lines:
    """As the 0.1 writer wrote it: no format field."""
    out = []
    for line in lines:
        r = parse(line)
        r.pop("format", None)
        out.append(schema.encode_line(r))
    return rechain(out, 0)


def calls(w: AuditWriter, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        w.write("call", fn="C_Sign", args={"session": 1, "i": i, "data_len": 32}, rv="CKR_OK", dur_us=10 + i,
                src="card")


def base(path: Path, n: int = 6, prog: str = "named") -> Lines:
    w = AuditWriter(str(path), program=prog)
    w.write("load", args={"version": "vectors", "python": "3", "module": "/usr/lib/x.so"})
    calls(w, n - 1)
    w.close()
    return path.read_bytes().splitlines(keepends=True)


def edit(lines: Lines, i: int, **changes: Any) -> Lines:
    out = list(lines)
    r = parse(out[i])
    r.update(changes)
    out[i] = schema.encode_line(r)
    return out


def cp_cli(log: Path, priv: str) -> None:
    """A checkpoint by the operator's command: another process, as in production."""
    subprocess.run([sys.executable, "-m", "shim.audit.cli", "checkpoint", str(log), "--key", priv],
                   check=True, cwd=HERE.parents[2], capture_output=True)


def main() -> int:
    vectors: list[dict[str, Any]] = []
    out = HERE
    for p in out.glob("*.jsonl*"):
        p.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        priv, pub = signing.keygen(str(t / "keys"))
        shutil.copy(pub, out / "vector-key.pub.pem")

        def add(name: str, lines: Lines | bytes, exit: int, seq: int | None, *, cp: bytes | None = None,
                use_key: bool = False, require: bool = False, note: str) -> None:
            f = out / f"{name}.jsonl"
            f.write_bytes(lines if isinstance(lines, bytes) else b"".join(lines))
            if cp is not None:
                (out / f"{name}.jsonl.checkpoints").write_bytes(cp)
            r = verify(str(f), key=signing.load_public(str(out / "vector-key.pub.pem")) if use_key else None,
                       checkpoints=str(out / f"{name}.jsonl.checkpoints") if cp is not None else os.devnull,
                       require_checkpoint=require)
            got = (r.exit_code, r.first_bad_seq)
            assert got == (exit, seq), f"{name}: sc4dnssec says {got} ({r.reason}), the spec says {(exit, seq)}"
            vectors.append({"name": name, "file": f.name, "checkpoints": f.name + ".checkpoints" if cp else None,
                            "key": use_key, "require_checkpoint": require, "exit": exit, "first_bad_seq": seq,
                            "note": note})

        def fresh(name: str, build: Callable[[Path], None]) -> Lines:
            p = t / f"{name}.jsonl"
            build(p)
            return p.read_bytes().splitlines(keepends=True)

        lines = base(t / "b.jsonl")
        add("empty", b"", 0, None, note="an empty file is an intact log of no records")
        add("v2-intact", lines, 0, None, note="one epoch, format 2 on its first record")
        add("v1-intact", v1(lines), 0, None, note="the same log as format 1 wrote it")
        add("v2-format-99", rechain(edit(lines, 0, format=99), 1), 5, 1, note="unknown format version")
        add("v2-format-1-declared", rechain(edit(lines, 0, format=1), 1), 5, 1,
            note="format 1 is never written as a field")
        later = list(lines)
        later[3] = schema.encode_line({"format": 2, **parse(later[3])})
        add("v2-format-on-later-record", rechain(later, 4), 1, 4, note="format only on an epoch's first record")
        add("v1-link-kind", rechain(edit(v1(lines), 2, kind="link"), 3), 1, 3, note="link does not exist in format 1")
        add("v2-link-in-middle", rechain(edit(lines, 2, kind="link"), 3), 1, 3, note="link only starts a file")
        for how, fn in (("space", lambda b: b.replace(b'","', b'", "', 1)),
                        ("escape", lambda b: b.replace(b'"named"', b'"\\u006eamed"')),
                        ("crlf", lambda b: b[:-1] + b"\r\n"),
                        ("dupkey", lambda b: b.replace(b'"rv":"CKR_OK"', b'"rv":"CKR_GENERAL_ERROR","rv":"CKR_OK"')),
                        ("utf8", lambda b: b.replace(b'"named"', '"nämed"'.encode())),
                        ("upper-hex-escape", lambda b: b.replace(b'"named"', b'"n\\u00E4med"'))):
            bad = list(lines)
            bad[2] = fn(bad[2])
            r = parse(bad[2])
            nxt = parse(bad[3])
            nxt["prev"] = schema.line_hash(bad[2])
            bad[3] = schema.encode_line(nxt)
            add(f"noncanonical-{how}", rechain(bad, 4), 1, 3, note=f"seq 3 re-encoded ({how}), chain recomputed")
            del r
        add("edited", edit(lines, 2, rv="CKR_PIN_INCORRECT"), 1, 3, note="seq 3 edited, chain not recomputed")
        add("edited-last", edit(lines, 5, rv="CKR_PIN_INCORRECT"), 0, None,
            note="the last record edited: undetectable without checkpoints (section 11)")
        add("cut-at-line", lines[:4], 0, None, note="tail cut at a line boundary: undetectable without checkpoints")
        add("cut-at-line-required", lines[:4], 4, None, require=True, note="...and an error with --require-checkpoint")
        add("deleted", lines[:2] + lines[3:], 1, 3, note="seq 3 deleted")
        add("duplicated", lines[:3] + [lines[2]] + lines[3:], 1, 3, note="seq 3 duplicated")
        add("reordered", lines[:2] + [lines[3], lines[2]] + lines[4:], 1, 3, note="seq 3 and 4 swapped")
        add("first-not-genesis", rechain(lines, 0)[:0] + [schema.encode_line({**parse(lines[0]), "prev": "1" * 64})]
            + lines[1:], 1, 1, note="first record does not start at genesis")
        add("epoch-owner", rechain(edit(lines, 3, pid=parse(lines[3])["pid"] + 1), 4), 1, 4,
            note="a record claims an epoch of another pid")
        add("torn-tail", b"".join(lines) + lines[5][:40], 3, None, note="an incomplete last line")
        torn = fresh("torn", lambda p: (p.write_bytes(b"".join(lines) + lines[5][:40]), calls(AuditWriter(str(p)), 2)))
        add("torn-recovered", torn, 0, None, note="the next writer closed the torn line with a recovery record")
        add("torn-recovery-mismatch", rechain(edit(torn, 7, args={**parse(torn[7])["args"], "torn_len": 3}), 8),
            1, 7, note="recovery record names other bytes")
        add("recovery-without-torn", rechain(edit(lines, 2, kind="recovery"), 3), 1, 3,
            note="recovery without a torn region")
        add("garbage-line", lines[:3] + [b"not a record\n"] + lines[3:], 1, 4,
            note="a non-record line not followed by a recovery record")
        add("gap-zero", rechain(edit(lines, 2, kind="gap", fn=None, rv=None, dur_us=None, src=None,
                                     args={"lost": 0}), 3), 1, 3, note="a gap of no lost records")
        odd = fresh("odd", lambda p: AuditWriter(str(p)).write(
            "call", fn="C_Sign", args={"f": [1e16, 0.0001, 1e-05, 2.5, float("nan"), float("inf")],
                                       "s": "tab\t nl\n quote\" bs\\ del\x7f é \U0001f600 /", "neg": -3,
                                       "t": True, "n": None}, rv="CKR_OK", dur_us=1, src="soft"))
        add("encoding-corners", odd, 0, None, note="floats, NaN, escapes, surrogate pairs in canonical form")

        # checkpoints
        cpd = t / "cp.jsonl"
        w = AuditWriter(str(cpd), program="named")
        calls(w, 4)
        cp_cli(cpd, priv)
        calls(w, 3, 4)
        cp_cli(cpd, priv)
        calls(w, 2, 7)
        w.close()
        cl = cpd.read_bytes().splitlines(keepends=True)
        cpf = (t / "cp.jsonl.checkpoints").read_bytes()
        recs = [parse(x) for x in cl]
        cps = [r["seq"] for r in recs if r["kind"] == "checkpoint"]
        add("checkpointed", cl, 0, None, cp=cpf, use_key=True, require=True, note="two checkpoints, key and file")
        add("checkpointed-no-key", cl, 0, None, cp=cpf, note="without the key: structure only")
        add("checkpointed-no-key-required", cl, 4, None, cp=cpf, require=True,
            note="--require-checkpoint needs the key")
        add("checkpoint-truncated", cl[:cps[1] - 2], 1, cps[1] - 1, cp=cpf, use_key=True,
            note="cut before the last checkpoint")
        rew = rechain(edit(cl, 1, rv="CKR_DEVICE_ERROR"), 2)
        for i in (cps[0] - 1, cps[1] - 1):
            r = parse(rew[i])
            r["args"]["head_sha256"] = r["prev"]
            rew[i] = schema.encode_line(r)
            rew = rechain(rew, i + 1)
        add("checkpoint-rewritten", rew, 1, cps[0], cp=cpf, use_key=True, note="chain and checkpoint heads recomputed")
        add("checkpoint-rewritten-no-key", rew, 1, cps[0] - 1, cp=cpf,
            note="without the key the detached file still catches it")
        add("checkpoint-rewritten-bare", rew, 0, None, note="without key or file: undetectable (section 11)")
        sig = parse(cl[cps[0] - 1])
        sig["args"]["sig"] = ("B" if sig["args"]["sig"][0] == "A" else "A") + sig["args"]["sig"][1:]
        add("checkpoint-bad-signature", rechain(cl[:cps[0] - 1] + [schema.encode_line(sig)] + cl[cps[0]:], cps[0]),
            1, cps[0], use_key=True, note="a forged checkpoint signature")
        add("checkpoint-wrong-head", rechain(edit(cl, cps[0] - 1, args={**recs[cps[0] - 1]["args"], "head_seq": 1}),
                                             cps[0]), 1, cps[0], note="checkpoint does not name its head")

        # rotation
        rot = t / "rot.jsonl"
        import shim.audit.writer as wmod

        wmod.ROTATION_CHECK_S = 0.0
        w = AuditWriter(str(rot), program="named")
        calls(w, 3)
        os.rename(rot, t / "rot.jsonl.1")
        rot.touch(mode=0o640)
        calls(w, 3, 3)
        w.close()
        old, new = (t / "rot.jsonl.1").read_bytes(), rot.read_bytes()
        add("rotated-old", old, 0, None, note="a rotated file")
        nl = new.splitlines(keepends=True)
        add("rotated-new", nl, 0, None, note="the file after it, starting with a link record")
        add("rotated-new-link-wrong-seq", rechain(edit(nl, 0, seq=9), 1), 1, 9,
            note="a link that does not chain to the head it names")
        add("rotated-new-first-deleted", nl[1:], 1, 1,
            note="the link record removed: the file no longer starts a chain")
    (out / "vectors.json").write_text(json.dumps({"vectors": vectors}, indent=1) + "\n")
    print(len(vectors), "vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
