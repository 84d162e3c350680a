"""The verifier says what it could not prove; --require-checkpoint makes that an error; ``show``
cannot drive a terminal; a huge last line cannot make a writer read it; exports verify on their own."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from audit_helpers import read_lines, run_cli, write_calls, write_lines

import shim.audit.writer as writer_mod
from shim.audit import schema, signing
from shim.audit.archive import ExportRefused, export, verify_manifest
from shim.audit.show import Filter, show
from shim.audit.verify import verify
from shim.audit.writer import AuditUnavailable, AuditWriter


def small_log(log: Path, n: int = 6) -> list[bytes]:
    w = AuditWriter(str(log), program="named")
    write_calls(w, n)
    w.close()
    return read_lines(log)


def test_without_checkpoints_the_verifier_says_what_it_cannot_prove(log: Path) -> None:
    lines = small_log(log)
    write_lines(log, lines[:4])  # tail cut at a line boundary: the chain cannot see it
    r = verify(str(log))
    assert r.ok and r.exit_code == 0
    assert any("cut from the end" in u and "recomputed from the first record" in u for u in r.unproven)
    out = run_cli("verify", str(log))
    assert out.returncode == 0 and "not proven: no signed checkpoint was checked" in out.stdout
    req = run_cli("verify", str(log), "--require-checkpoint")
    assert req.returncode == 4 and "--require-checkpoint" in req.stdout


def test_a_checkpoint_with_key_satisfies_require_checkpoint(log: Path, tmp_path: Path) -> None:
    w = AuditWriter(str(log))
    write_calls(w, 3)
    priv, pub = signing.keygen(str(tmp_path / "keys"))
    assert run_cli("checkpoint", str(log), "--key", priv).returncode == 0
    write_calls(w, 2, 3)
    w.close()
    out = run_cli("verify", str(log), "--key", pub, "--require-checkpoint")
    assert out.returncode == 0, out.stdout
    assert "records after seq 4 (the last checkpoint) are protected by the hash chain only" in out.stdout
    nokey = run_cli("verify", str(log), "--require-checkpoint")
    assert nokey.returncode == 4


def test_show_escapes_control_characters_from_other_processes(log: Path) -> None:
    evil = "x\x1b]0;owned\x07\x1b[2J\u202e"
    w = AuditWriter(str(log), program=evil)
    w.write("call", fn="C_Sign\x1b[31m", args={"label": "a\rb\x9b"}, rv="CKR_OK", dur_us=1, src="card")
    w.close()
    for as_json in (False, True):
        buf = io.StringIO()
        assert show(str(log), Filter(), buf, as_json=as_json) == 1
        text = buf.getvalue()
        assert not any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in text), text
    buf = io.StringIO()
    show(str(log), Filter(), buf)
    assert "x\\x1b]0;" in buf.getvalue() and "C_Sign\\x1b[31m" in buf.getvalue() and "a\\x0db" in buf.getvalue()
    out = run_cli("show", str(log))
    assert out.returncode == 0 and "\x1b" not in out.stdout


def test_a_huge_last_line_is_never_read_whole(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_log(log, 3)
    with open(log, "r+b") as f:  # 100 MB without a newline (sparse: costs no disk)
        f.truncate(os.path.getsize(log) + 100 * 1024 * 1024)
    read = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, off: int) -> bytes:
        read.append(n)
        return real_pread(fd, n, off)

    monkeypatch.setattr(writer_mod.os, "pread", counting_pread)
    w = AuditWriter(str(log))
    with pytest.raises(AuditUnavailable, match="no audit record in the last"):
        write_calls(w, 1)
    assert sum(read) <= 2 * writer_mod.TAIL_SCAN_LIMIT


def test_a_torn_line_within_the_bound_is_still_recovered(log: Path) -> None:
    small_log(log, 3)
    with open(log, "ab") as f:  # a long fragment, no newline: a writer killed mid-write
        f.write(b'{"seq":4,' + b"x" * (schema.MAX_LINE // 2))
    write_calls(AuditWriter(str(log)), 1)
    r = verify(str(log))
    assert r.ok and len(r.recovered) == 1


def test_export_writes_a_manifest_that_verifies_without_the_host(log: Path, tmp_path: Path) -> None:
    w = AuditWriter(str(log))
    write_calls(w, 3)
    priv, pub = signing.keygen(str(tmp_path / "keys"))
    assert run_cli("checkpoint", str(log), "--key", priv).returncode == 0
    write_calls(w, 2, 3)
    w.close()
    arch = tmp_path / "archive"
    out = run_cli("export", str(log), "--to", str(arch), "--key", pub)
    assert out.returncode == 0, out.stderr
    m = json.loads((arch / "manifest.json").read_text())
    assert [f["role"] for f in m["files"]] == ["log", "checkpoints"]
    assert m["log"]["format_versions"] == [schema.FORMAT_VERSION] and m["log"]["last_seq"] == 6
    assert m["log"]["head_sha256"] == schema.line_hash(read_lines(log)[-1])
    assert len(m["checkpoints"]) == 1 and m["checkpoints"][0]["sig"]
    assert m["verifier"]["formats"] == list(schema.SUPPORTED_VERSIONS)
    log.unlink()  # the original host is gone
    ok = run_cli("verify", "--manifest", str(arch / "manifest.json"), "--key", pub, "--require-checkpoint")
    assert ok.returncode == 0 and "every file matches the manifest" in ok.stdout, ok.stdout
    copy = arch / "audit.jsonl"
    data = copy.read_bytes()
    copy.write_bytes(data.replace(b"CKR_OK", b"CKR_NO", 1))
    bad = run_cli("verify", "--manifest", str(arch), "--key", pub)
    assert bad.returncode == 1 and "differs from the manifest" in bad.stdout
    copy.write_bytes(data)
    m["log"]["last_seq"] = 7
    (arch / "manifest.json").write_text(json.dumps(m))
    res = verify_manifest(str(arch))
    assert res.exit_code == 1 and any("last_seq" in p for p in res.problems)


def test_export_refuses_a_tampered_log_and_a_used_directory(log: Path, tmp_path: Path) -> None:
    lines = small_log(log)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(OSError, match="not empty"):
        export(str(log), str(tmp_path / "used"))
    del lines[2]
    write_lines(log, lines)
    with pytest.raises(ExportRefused, match="seq 3"):
        export(str(log), str(tmp_path / "a2"))
    assert run_cli("export", str(log), "--to", str(tmp_path / "a3")).returncode == 1
