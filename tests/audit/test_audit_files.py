"""Planted files and rotation: the writer refuses symlinks, links and devices, never falls back to a
shared directory, and follows logrotate to the new file with a chained link record."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from audit_helpers import read_lines, rec, run_cli, write_calls, write_lines

import shim.audit.writer as writer_mod
from shim.audit import files, schema, signing
from shim.audit.checkpoint import checkpoint
from shim.audit.verify import verify, verify_files
from shim.audit.writer import AuditUnavailable, AuditWriter


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_bytes(b"root:x:0:0\n")
    log = tmp_path / "audit.jsonl"
    log.symlink_to(target)
    w = AuditWriter(str(log))
    with pytest.raises(AuditUnavailable, match="symbolic link"):
        write_calls(w, 1)
    assert target.read_bytes() == b"root:x:0:0\n"


def test_dev_null_is_refused_by_writer_and_verifier(capsys: pytest.CaptureFixture[str]) -> None:
    w = AuditWriter(os.devnull)
    with pytest.raises(AuditUnavailable, match="not a regular file"):
        write_calls(w, 1)
    out = run_cli("verify", os.devnull)
    assert out.returncode == 2 and "not a regular file" in out.stderr
    assert run_cli("show", os.devnull).returncode == 2


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(AuditUnavailable, match="not a regular file"):
        write_calls(AuditWriter(str(fifo)), 1)


def test_a_hard_link_to_another_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"")
    log = tmp_path / "audit.jsonl"
    os.link(other, log)
    with pytest.raises(AuditUnavailable, match="hard links"):
        write_calls(AuditWriter(str(log)), 1)
    assert other.read_bytes() == b""


def test_a_world_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(AuditUnavailable, match="writable by everyone"):
        write_calls(AuditWriter(str(d / "audit.jsonl")), 1)


def test_a_symlinked_checkpoint_file_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    w = AuditWriter(str(log))
    write_calls(w, 2)
    w.close()
    priv, _ = signing.keygen(str(tmp_path / "keys"))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    Path(str(log) + ".checkpoints").symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        checkpoint(str(log), signing.load_private(priv))
    assert target.read_bytes() == b""


def test_missing_directories_are_created_private(tmp_path: Path) -> None:
    log = tmp_path / "state" / "sc4dnssec" / "audit.jsonl"
    w = AuditWriter(str(log))
    write_calls(w, 1)
    w.close()
    assert stat.S_IMODE(log.parent.stat().st_mode) == files.DIR_MODE
    assert stat.S_IMODE(log.stat().st_mode) & 0o007 == 0


def test_no_home_means_no_log_path_never_a_shared_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "_passwd_home", lambda: "")
    unwritable = "/proc/sc4dnssec-cannot-exist"
    assert files.default_path({}, unwritable) == ""
    assert files.default_path({"HOME": "/"}, unwritable) == ""
    assert files.default_path({"HOME": str(tmp_path)}, unwritable) == str(
        tmp_path / ".local/state/sc4dnssec/audit.jsonl")
    assert files.default_path({"XDG_STATE_HOME": str(tmp_path)}, unwritable) == str(
        tmp_path / "sc4dnssec/audit.jsonl")
    with pytest.raises(AuditUnavailable, match="SC4DNSSEC_AUDIT_LOG"):
        write_calls(AuditWriter(""), 1)
    w = AuditWriter("", on_failure="fail-open")
    write_calls(w, 2)
    assert w.lost == 2


@pytest.fixture
def rotation_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the path's inode on every write (the writer does it at most once a second)."""
    monkeypatch.setattr(writer_mod, "ROTATION_CHECK_S", 0.0)


def test_rename_and_create_continues_the_chain_from_a_link(tmp_path: Path, rotation_now: None) -> None:
    log, old = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    w = AuditWriter(str(log), program="named")
    write_calls(w, 4)
    os.rename(log, old)
    fd = os.open(log, os.O_CREAT | os.O_WRONLY, 0o640)  # logrotate "create"
    os.close(fd)
    write_calls(w, 3, 4)
    w.close()
    assert len(read_lines(old)) == 4
    new = [rec(x) for x in read_lines(log)]
    link = new[0]
    assert link["kind"] == "link" and link["format"] == schema.FORMAT_VERSION
    assert link["seq"] == 5 and link["prev"] == schema.line_hash(read_lines(old)[-1])
    assert link["args"]["old_head_seq"] == 4 and link["epoch"] != rec(read_lines(old)[0])["epoch"]
    assert [r["seq"] for r in new] == [5, 6, 7, 8] and len({r["epoch"] for r in new}) == 1
    alone = verify(str(log))
    assert alone.ok and alone.first_seq == 5 and alone.link is not None
    assert any("rotated file" in u for u in alone.unproven)
    both = verify_files([str(old), str(log)])
    assert all(r.ok for r in both) and not any("rotated file" in u for u in both[1].unproven)
    out = run_cli("verify", str(old), str(log))
    assert out.returncode == 0 and "starts with a link" in out.stdout


def test_checkpoints_across_a_rotation_are_checked_in_the_file_they_cover(tmp_path: Path,
                                                                          rotation_now: None) -> None:
    log, old = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    priv, pub = signing.keygen(str(tmp_path / "keys"))
    w = AuditWriter(str(log), program="named")
    write_calls(w, 3)
    assert run_cli("checkpoint", str(log), "--key", priv).returncode == 0
    write_calls(w, 1, 3)
    os.rename(log, old)
    write_calls(w, 2, 4)
    assert run_cli("checkpoint", str(log), "--key", priv).returncode == 0
    w.close()
    cps = str(log) + ".checkpoints"  # one detached file for both (logrotate rotates only the log)
    assert len(signing.read_checkpoints(cps)) == 2
    out = run_cli("verify", str(old), str(log), "--key", pub, "--checkpoints", cps, "--require-checkpoint")
    assert out.returncode == 0, out.stdout
    assert out.stdout.count("1 signature(s) verified") == 2
    alone = run_cli("verify", str(log), "--key", pub)
    assert alone.returncode == 0 and "in the file this one replaced" in alone.stdout


def test_a_removed_log_is_recreated_with_a_link(tmp_path: Path, rotation_now: None) -> None:
    log = tmp_path / "audit.jsonl"
    w = AuditWriter(str(log))
    write_calls(w, 3)
    log.unlink()
    write_calls(w, 2, 3)
    w.close()
    lines = read_lines(log)
    assert rec(lines[0])["kind"] == "link" and rec(lines[0])["args"]["old_head_seq"] == 3
    assert verify(str(log)).ok


def test_a_second_writer_follows_the_rotation_into_the_same_new_file(tmp_path: Path, rotation_now: None) -> None:
    log, old = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    a = AuditWriter(str(log), program="named")
    write_calls(a, 2)
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other process: appends before and after the rotation
        try:
            write_calls(a, 1)
            os.read(go_r, 1)
            write_calls(a, 2)
        finally:
            os._exit(0)
    while len(read_lines(log)) < 3:
        os.sched_yield()
    os.rename(log, old)
    os.close(os.open(log, os.O_CREAT | os.O_WRONLY, 0o640))
    write_calls(a, 2, 2)
    os.write(go_w, b"x")
    assert os.waitpid(pid, 0)[1] == 0
    a.close()
    new = [rec(x) for x in read_lines(log)]
    assert [r["kind"] for r in new] == ["link", "call", "call", "call", "call"]
    assert [r["pid"] for r in new] == [os.getpid()] * 3 + [pid] * 2
    assert "format" in new[0] and "format" in new[3] and "format" not in new[4]
    assert all(r.ok for r in verify_files([str(old), str(log)]))


def test_the_link_must_name_a_record_of_the_old_file(tmp_path: Path, rotation_now: None) -> None:
    log, old = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    w = AuditWriter(str(log))
    write_calls(w, 3)
    os.rename(log, old)
    write_calls(w, 2, 3)
    w.close()
    lines = read_lines(old)
    r = rec(lines[-1])
    r["rv"] = "CKR_DEVICE_ERROR"
    lines[-1] = schema.encode_line(r)
    write_lines(old, lines)  # the old file's last record rewritten after the rotation
    results = verify_files([str(old), str(log)])
    assert results[0].ok  # the edited last record is undetectable in the old file alone
    assert not results[1].ok and "do not belong together" in (results[1].reason or "")
    assert run_cli("verify", str(old), str(log)).returncode == 1


def test_copytruncate_starts_a_new_chain_in_the_same_file(tmp_path: Path, rotation_now: None) -> None:
    log = tmp_path / "audit.jsonl"
    w = AuditWriter(str(log))
    write_calls(w, 3)
    os.truncate(log, 0)
    write_calls(w, 2)
    w.close()
    assert [rec(x)["seq"] for x in read_lines(log)] == [1, 2]
    assert verify(str(log)).ok
