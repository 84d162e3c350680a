"""Make the audit-log corpus: real logs written by each released format version, and tampered copies.

Run by hand when a format version is released, never by CI (CI verifies the committed files):

    git -C /work/main worktree add --detach /work/wt-v1 <release commit>
    (cd /work/wt-v1 && tox -e py --notest)
    python tests/audit/corpus/make_corpus.py --old-root /work/wt-v1 --old-version 1 --out tests/audit/corpus

It writes ``v1/`` (a log written entirely by the old release), ``upgrade-v1-v2/`` (the old release's
signer keeps appending while this tree's signer and checkpoint tool append too), each with its
detached checkpoint file, ``tampered/`` copies and ``expected.json``, and ``keys/`` (the operator's
public key; the private key is thrown away).  Every log is written by the real shim over SoftHSM
(PyKCS11 signing, as named would), the real checkpoint command, and the real writer for the torn
line recovery, the fail-open gap and a fork.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path[:0] = [str(ROOT)]

from shim.audit import schema  # noqa: E402
from shim.audit.verify import verify  # noqa: E402
from virtualcard.pytest_plugin import TEST_PIN, make_softhsm  # noqa: E402

# A writer that forks, and one that loses records to RLIMIT_FSIZE under fail-open, then writes a gap.
# Uses only the writer API every release has (AuditWriter(path, ...).write(kind, ...)).
WRITER_SCRIPT = r'''
import os, resource, signal, sys
from shim.audit.writer import AuditWriter
log = sys.argv[1]
w = AuditWriter(log, program="sc4-corpus")
w.write("load", args={"version": "corpus", "python": sys.version.split()[0], "module": "writer-only"})
w.write("call", fn="C_GetSlotList", args={"token_present": True}, rv="CKR_OK", dur_us=5, src="card")
pid = os.fork()
if pid == 0:
    w.write("call", fn="C_Initialize", args={}, rv="CKR_OK", dur_us=7, src="soft")
    w.write("call", fn="C_Finalize", args={}, rv="CKR_OK", dur_us=3, src="soft")
    os._exit(0)
os.waitpid(pid, 0)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
w2 = AuditWriter(log, program="sc4-corpus", on_failure="fail-open")
w2.write("call", fn="C_OpenSession", args={"slot": 0}, rv="CKR_OK", dur_us=9, src="card")
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(log) + 10, hard))
for i in range(3):
    w2.write("call", fn="C_Sign", args={"session": 1, "data_len": 32, "i": i}, rv="CKR_OK", dur_us=40, src="card")
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
w2.write("call", fn="C_CloseSession", args={"session": 1}, rv="CKR_OK", dur_us=4, src="card")
w2.close()
w.close()
'''


class Tree:
    """One source tree (a release or this one) with its built module and Python."""

    def __init__(self, root: Path, python: Path) -> None:
        self.root, self.python = root, python
        self.module = subprocess.run([str(python), "-c", "from shim.locate import module_path; print(module_path())"],
                                     cwd=root, check=True, capture_output=True, text=True).stdout.strip()

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SC4DNSSEC_", "PYTHON"))}
        env.update(extra, PYTHONPATH=str(self.root))
        return env

    def run(self, args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.python), *args], cwd=self.root, env=self.env(env), check=True,
                              capture_output=True, text=True, **kw)

    def sign(self, log: Path, token_env: dict[str, str], backend: str, work: Path, *extra: str,
             background: bool = False) -> subprocess.Popen[str] | None:
        env = {**token_env, "SC4DNSSEC_BACKEND": backend, "SC4DNSSEC_AUDIT_LOG": str(log),
               "SC4DNSSEC_CONF": str(work / "none.toml"), "P11_MODULE": self.module, "P11_PIN": TEST_PIN}
        argv = [str(self.python), str(self.root / "tests/reliability/signer.py"), "--out", str(work / "sigs.jsonl"),
                *extra]
        if background:
            return subprocess.Popen(argv, cwd=self.root, env=self.env(env), text=True)
        p = subprocess.run(argv, cwd=self.root, env=self.env(env), capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"signer failed:\n{p.stdout}\n{p.stderr}")
        return None

    def checkpoint(self, log: Path, key: Path) -> None:
        self.run(["-m", "shim.audit.cli", "checkpoint", str(log), "--key", str(key)], {})

    def writer_script(self, log: Path) -> None:
        self.run(["-c", WRITER_SCRIPT, str(log)], {})


def torn_fragment(log: Path) -> None:
    """What a writer killed in the middle of write() leaves: the first bytes of a line, no newline."""
    last = log.read_bytes().splitlines()[-1]
    with open(log, "ab") as f:
        f.write(last[:57])


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rechain(lines: list[bytes], start: int) -> list[bytes]:
    """Recompute every chain value from ``start`` on, as a careful attacker would (torn lines kept)."""
    out = list(lines[:start])
    region: list[bytes] = []
    last_record = None
    for line in out:
        if schema.parse_line(line) is not None:
            last_record = line
    for line in lines[start:]:
        r = schema.parse_line(line)
        if r is None:
            region.append(line)
            out.append(line)
            continue
        if region:
            assert r["kind"] == "recovery" and last_record is not None
            r["prev"] = schema.line_hash(b"".join(region)[:-1])
            r["args"]["after_sha256"] = schema.line_hash(last_record)
            r["args"]["torn_offset"] = sum(map(len, out)) - sum(map(len, region))
            region = []
        else:
            r["prev"] = schema.line_hash(last_record) if last_record is not None else schema.GENESIS
        if r["kind"] == "checkpoint":  # its signature no longer fits; only the key can tell
            r["args"]["head_sha256"] = r["prev"]
        line = schema.encode_line(r)
        out.append(line)
        last_record = line
    return out


def tamper(case_dir: Path, log: Path) -> list[dict[str, Any]]:
    """Tampered copies of ``log`` and what verification must say about each."""
    lines = lines_of(log)
    recs = [schema.parse_line(x) for x in lines]
    calls = [i for i, r in enumerate(recs) if r is not None and r["kind"] == "call" and r["fn"] == "C_Sign"]
    cps = [i for i, r in enumerate(recs) if r is not None and r["kind"] == "checkpoint"]
    covered = [i for i in calls if i < cps[-1]]
    victim = covered[len(covered) // 2]  # covered by the last checkpoint
    seq = recs[victim]["seq"]  # type: ignore[index]
    out: list[dict[str, Any]] = []
    tdir = case_dir / "tampered"
    tdir.mkdir()

    def put(name: str, data: list[bytes], why: str) -> Path:
        p = tdir / name
        p.write_bytes(b"".join(data))
        out.append({"file": f"tampered/{name}", "what": why})
        return p

    edited = list(lines)
    edited[victim] = edited[victim].replace(b'"rv":"CKR_OK"', b'"rv":"CKR_DEVICE_ERROR"')
    put("edited.jsonl", edited, f"seq {seq}: rv changed, chain not recomputed")
    put("rewritten.jsonl", rechain(edited, victim + 1), f"seq {seq}: rv changed, every later prev recomputed")
    put("deleted.jsonl", lines[:victim] + lines[victim + 1:], f"seq {seq} deleted")
    put("truncated.jsonl", lines[:cps[-1] - 2], "cut at a line boundary before the last checkpoint")
    spaced = list(lines)
    spaced[victim] = spaced[victim].replace(b'","', b'", "', 1)
    put("noncanonical.jsonl", rechain(spaced[:victim + 1], victim + 1) + rechain(spaced, victim + 1)[victim + 1:],
        f"seq {seq} re-encoded with a space, later prev recomputed")
    firsts = [i for i, r in enumerate(recs) if r is not None and "format" in r]
    firsts = [i for i in firsts if i < cps[-1]]
    if firsts:
        i = firsts[-1]
        r = dict(recs[i])  # type: ignore[arg-type]
        r.pop("format")
        downgraded = list(lines)
        downgraded[i] = schema.encode_line(r)
        put("downgraded.jsonl", rechain(downgraded, i + 1),
            f"format field removed from seq {r['seq']} (a version-2 epoch made to look like version 1), "
            "later prev recomputed")
    return out


def expected_for(case_dir: Path, entry: dict[str, Any], cp: Path, pub: Path) -> dict[str, Any]:
    """Record the verifier's verdict with and without checkpoints, for CI to compare against."""
    from shim.audit import signing

    p = case_dir / entry["file"]
    key = signing.load_public(str(pub))
    with_cp = verify(str(p), key=key, checkpoints=str(cp))
    bare = verify(str(p), checkpoints=os.devnull)
    entry.update(exit=with_cp.exit_code, first_bad_seq=with_cp.first_bad_seq, reason=with_cp.reason,
                 exit_without_checkpoints=bare.exit_code, first_bad_seq_without_checkpoints=bare.first_bad_seq)
    return entry


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-root", required=True, type=Path, help="worktree of the released commit, module built")
    ap.add_argument("--old-python", type=Path, help="its Python (default OLD_ROOT/.tox/py/bin/python)")
    ap.add_argument("--old-version", type=int, default=1)
    ap.add_argument("--new-python", type=Path, default=ROOT / ".tox/py/bin/python")
    ap.add_argument("--out", type=Path, default=HERE)
    a = ap.parse_args()
    old = Tree(a.old_root.resolve(), (a.old_python or a.old_root / ".tox/py/bin/python").absolute())
    new = Tree(ROOT, a.new_python.absolute())
    commit = subprocess.run(["git", "-C", str(old.root), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    v_old, v_new = f"v{a.old_version}", f"v{schema.FORMAT_VERSION}"
    with tempfile.TemporaryDirectory(prefix="sc4-corpus-") as tmp:
        work = Path(tmp)
        info = make_softhsm(work / "token")
        (work / "none.toml").write_text("")
        keys = work / "keys"
        old.run(["-m", "shim.audit.cli", "keygen", str(keys)], {})
        priv, pub = keys / "checkpoint-ed25519.pem", keys / "checkpoint-ed25519.pub.pem"
        tok = info.env
        cases: dict[str, Path] = {}

        # 1. Everything written by the old release.
        log = work / v_old / "audit.jsonl"
        log.parent.mkdir()
        old.sign(log, tok, info.module, work, "--count", "3")
        old.sign(log, tok, info.module, work, "--count", "2", "--threads", "2", "--keys", "ec,rsa")
        old.checkpoint(log, priv)
        old.writer_script(log)
        torn_fragment(log)
        old.sign(log, tok, info.module, work, "--count", "2")  # its writer closes the torn line
        old.checkpoint(log, priv)
        old.sign(log, tok, info.module, work, "--count", "1")
        cases[v_old] = log

        # 2. An upgrade while the old signer keeps appending.
        log = work / f"upgrade-{v_old}-{v_new}" / "audit.jsonl"
        log.parent.mkdir()
        old.sign(log, tok, info.module, work, "--count", "3")
        old.checkpoint(log, priv)
        named = old.sign(log, tok, info.module, work, "--seconds", "2", "--keys", "rsa",
                         background=True)
        assert named is not None
        time.sleep(0.5)
        new.sign(log, tok, info.module, work, "--count", "2")
        new.checkpoint(log, priv)
        new.writer_script(log)
        new.sign(log, tok, info.module, work, "--count", "2")
        assert named.wait(60) == 0
        new.checkpoint(log, priv)
        new.sign(log, tok, info.module, work, "--count", "1")
        cases[f"upgrade-{v_old}-{v_new}"] = log

        out = a.out
        (out / "keys").mkdir(parents=True, exist_ok=True)
        # Each run's key has its own name: the directories of earlier runs keep theirs.
        key_name = pub.name if a.old_version == 1 else f"checkpoint-ed25519-v{a.old_version}.pub.pem"
        shutil.copy(pub, out / "keys" / key_name)
        for name, log in cases.items():
            dest = out / name
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir()
            shutil.copy(log, dest / log.name)
            shutil.copy(str(log) + ".checkpoints", dest / (log.name + ".checkpoints"))
            genuine = dest / log.name
            cp = dest / (log.name + ".checkpoints")
            r = verify(str(genuine), checkpoints=str(cp))
            assert r.ok, (name, r.reason)
            entries = [{"file": log.name, "what": "as written"}] + tamper(dest, genuine)
            expected = {"made_by": {"old_release_commit": commit, "old_format": a.old_version,
                                    "new_format": schema.FORMAT_VERSION},
                        "log": log.name, "checkpoints": cp.name, "key": f"../keys/{key_name}",
                        "records": r.records, "last_seq": r.last_seq, "head_sha256": r.head,
                        "format_versions": sorted(r.versions),
                        "version_starts": [list(x) for x in r.version_starts],
                        "cases": [expected_for(dest, e, cp, out / "keys" / key_name) for e in entries]}
            (dest / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
            print(name, r.records, "records", r.version_starts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
