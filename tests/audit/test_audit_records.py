"""Record format, secret canaries, syslog shipping and the show command."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_helpers import read_lines, rec, run_cli, write_calls

from shim.audit import schema
from shim.audit.redact import redact
from shim.audit.verify import verify
from shim.audit.writer import AuditWriter

CANARY = "CANARY-PIN-8641-secret"


def test_records_follow_the_schema_exactly(log: Path) -> None:
    w = AuditWriter(str(log), program="named")
    w.write("load", args={"version": "0.1"})
    w.write("call", fn="C_Sign", args={"session": 3}, rv=0x0A0, dur_us=17, src="card", error="bad pin")
    w.close()
    lines = read_lines(log)
    first, second = rec(lines[0]), rec(lines[1])
    assert list(first) == [f for f in schema.FIELDS if f != "error"]  # the epoch's first: format
    assert first["format"] == schema.FORMAT_VERSION
    assert list(second) == [f for f in schema.FIELDS if f != "format"]
    assert (first["seq"], first["prev"]) == (1, "0" * 64)
    assert second["seq"] == 2 and second["prev"] == schema.line_hash(lines[0])
    assert second["rv"] == "CKR_PIN_INCORRECT"  # a CK_RV number is printed by its shim.constants name
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", second["ts"])
    assert re.fullmatch(r"[0-9a-f]{16}", second["epoch"]) and second["epoch"] == w.epoch
    assert (second["pid"], second["uid"], second["prog"]) == (os.getpid(), os.getuid(), "named")
    assert second["thread"] == threading.get_native_id()
    for line in lines:  # the writer's fast assembly is byte-identical to the reference encoding
        assert schema.encode_line(rec(line)) == line
        assert b" " not in line.replace(b"bad pin", b"")


def test_writer_rejects_unknown_kind_and_src(log: Path) -> None:
    w = AuditWriter(str(log))
    with pytest.raises(ValueError):
        w.write("hack")
    with pytest.raises(ValueError):
        w.write("call", fn="C_Sign", src="hsm")
    assert not log.exists() or log.read_bytes() == b""


def test_unserialisable_args_keep_the_record(log: Path) -> None:
    w = AuditWriter(str(log))
    w.write("call", fn="C_Sign", args={("tuple", "key"): 1})  # type: ignore[dict-item]
    w.write("call", fn="C_Sign", args={"obj": object(), "data": b"\x01\x02"})
    w.close()
    lines = read_lines(log)
    assert rec(lines[0])["args"] == {"unserialisable": "TypeError"}
    assert rec(lines[1])["args"] == {"obj": "<object>", "data": "<bytes len=2>"}
    assert verify(str(log)).ok


def _secret_args() -> dict[str, object]:
    return {
        "pin": CANARY, "PIN": CANARY, "pPin": CANARY, "ulPinLen": len(CANARY), "so_pin": CANARY,
        "nested": {"old_pin": CANARY, "new-pin": CANARY, "deeper": [{"password": CANARY}]},
        "template": [{"type": "CKA_VALUE", "value": CANARY}, ["CKA_VALUE", CANARY],
                     ["CKA_PRIVATE_EXPONENT", CANARY], {"CKA_PRIME_1": CANARY}],
        "raw": CANARY.encode(), "session": 1, "label": "zsk",
    }


@pytest.fixture
def syslog_sock(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "log.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def test_planted_pin_never_reaches_file_syslog_or_output(log: Path, syslog_sock: tuple[str, socket.socket],
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    path, sock = syslog_sock
    args = _secret_args()
    snapshot = json.dumps(args, default=repr)
    w = AuditWriter(str(log), syslog=True, syslog_path=path)
    w.write("call", fn="C_Login", args=args, rv="CKR_OK", dur_us=1)
    w.write("call", fn="C_InitPIN", args={"session": 1, "pin": CANARY}, rv="CKR_OK", dur_us=1)
    w.close()
    assert json.dumps(args, default=repr) == snapshot  # the caller's dict is not modified
    data = log.read_bytes()
    assert CANARY.encode() not in data
    assert data.count(b'"<redacted>"') == 13
    assert rec(read_lines(log)[0])["args"]["session"] == 1 and b'"label":"zsk"' in data
    datagrams = [sock.recv(65536), sock.recv(65536)]
    assert all(CANARY.encode() not in d for d in datagrams)
    outputs = [run_cli("show", str(log)), run_cli("show", "--json", str(log)),
               run_cli("verify", "-v", str(log))]
    captured = capfd.readouterr()
    for text in [o.stdout + o.stderr for o in outputs] + [captured.out, captured.err]:
        assert CANARY not in text


def test_redact_keeps_harmless_values_and_the_input_object() -> None:
    harmless = {"session": 1, "mechanism": "CKM_ECDSA", "template": ["CKA_LABEL", "CKA_ID"], "pinned": None}
    assert redact({"session": 1, "mechanism": "CKM_ECDSA"}) == {"session": 1, "mechanism": "CKM_ECDSA"}
    nested = {"a": {"b": [1, 2]}}
    assert redact(nested) is nested  # no copy when nothing is secret
    assert redact(harmless)["template"] == ["CKA_LABEL", "CKA_ID"]
    assert redact({"value_sha256": "ab", "value_len": 3}) == {"value_sha256": "ab", "value_len": 3}


def test_syslog_gets_every_record_as_rfc5424(log: Path, syslog_sock: tuple[str, socket.socket]) -> None:
    path, sock = syslog_sock
    w = AuditWriter(str(log), syslog=True, syslog_path=path, program="named")
    write_calls(w, 3)
    w.close()
    lines = read_lines(log)
    host = socket.gethostname()
    for line in lines:
        msg = sock.recv(65536)
        m = re.fullmatch(rb"<86>1 (\S+) (\S+) named (\d+) call - (.*)", msg, re.S)
        assert m is not None, msg
        assert m.group(1).decode() == rec(line)["ts"] and m.group(2).decode() == host[:255]
        assert int(m.group(3)) == os.getpid() and m.group(4) == line[:-1]


def test_missing_syslog_socket_never_fails_the_call(log: Path, tmp_path: Path) -> None:
    w = AuditWriter(str(log), syslog=True, syslog_path=str(tmp_path / "nothing"))
    write_calls(w, 3)
    w.close()
    assert verify(str(log)).records == 3


@pytest.fixture
def mixed_log(log: Path) -> Path:
    w = AuditWriter(str(log), program="named")
    w.write("load", args={"version": "0.1"})
    w.write("call", fn="C_Login", args={"session": 1}, rv="CKR_PIN_INCORRECT", dur_us=3)
    write_calls(w, 2)
    w.write("call", fn="C_FindObjects", args={"session": 1}, rv="CKR_OK", dur_us=9)
    w.close()
    return log


def test_show_table_and_filters(mixed_log: Path) -> None:
    out = run_cli("show", str(mixed_log))
    assert out.returncode == 0
    rows = out.stdout.splitlines()
    assert rows[0].split() == ["seq", "ts", "pid", "prog", "fn", "rv", "dur", "src", "args"]
    assert len(rows) == 6 and "[load]" in rows[1] and "C_Login" in rows[2] and "CKR_PIN_INCORRECT" in rows[2]
    assert "3µs" in rows[2] and "card" in rows[3] and "session=1" in rows[3]
    only_sign = run_cli("show", "--fn", "Sign", str(mixed_log)).stdout.splitlines()[1:]
    assert len(only_sign) == 2 and all("C_Sign" in r for r in only_sign)
    bad = run_cli("show", "--rv", "PIN_INCORRECT", str(mixed_log)).stdout.splitlines()[1:]
    assert len(bad) == 1 and "C_Login" in bad[0]
    assert len(run_cli("show", "--kind", "load", str(mixed_log)).stdout.splitlines()) == 2
    assert len(run_cli("show", "--pid", str(os.getpid()), str(mixed_log)).stdout.splitlines()) == 6
    assert len(run_cli("show", "--pid", "1", str(mixed_log)).stdout.splitlines()) == 1


def test_show_json_prints_the_lines_unchanged(mixed_log: Path) -> None:
    out = run_cli("show", "--json", "--fn", "C_Sign", "--fn", "C_FindObjects", str(mixed_log))
    want = [line.decode().rstrip("\n") for line in read_lines(mixed_log) if b'"fn":"C_Sign"' in line
            or b'"fn":"C_FindObjects"' in line]
    assert out.stdout.splitlines() == want


def test_cli_registers_under_a_parent_parser() -> None:
    import argparse

    from shim.audit import cli

    parser = argparse.ArgumentParser(prog="sc4dnssec")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", "verify", "x.jsonl", "--key", "k.pem"])
    assert args.func is cli._verify and args.file == ["x.jsonl"] and args.key == "k.pem"


def test_verify_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    out = run_cli("verify", str(tmp_path / "absent"))
    assert out.returncode == 2 and "No such file" in out.stderr
