"""Shipping: with ``[audit] syslog = true`` every record also goes to /dev/log as RFC 5424.

The writer addresses the fixed path /dev/log (``AuditWriter(syslog_path=...)`` exists but
the shim's config does not expose it), so the child runs in a private mount namespace
whose /dev/log is the test's own datagram socket (rel_helpers.devlog_prefix).  The sender
never blocks: a collector whose queue is full loses datagrams (``SyslogSender.dropped``
counts them, nothing reports the count yet), so the collector here keeps up.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from rel_helpers import SIGNER, ShimRun, SyslogCapture, Token, devlog_prefix, record_figure, signer_env

RFC5424 = re.compile(rb"^<(\d+)>1 (\S+) (\S+) (\S+) (\d+) (\S+) - (.*)$", re.S)


@pytest.fixture
def capture(tmp_path: Path) -> SyslogCapture:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private /dev/log needs root and unshare")
    return SyslogCapture(Path("/tmp") / f"sc4-devlog-{os.getpid()}-{tmp_path.name[-20:]}.sock")


def test_every_record_is_shipped_to_syslog_in_file_order(token: Token, tmp_path: Path,
                                                         capture: SyslogCapture) -> None:
    run = ShimRun.make(tmp_path / "run", token, conf={"audit": {"syslog": True}})
    try:
        run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "10",
                   extra_env=signer_env(run), prefix=devlog_prefix(tmp_path, capture.path))
    finally:
        msgs = capture.close()
        capture.path.unlink(missing_ok=True)
    lines = run.audit_log.read_bytes().splitlines()
    shipped = []
    for m in msgs:
        parsed = RFC5424.match(m)
        assert parsed, m[:200]
        pri, ts, host, app, pid, msgid, body = parsed.groups()
        assert int(pri) == 10 * 8 + 6  # authpriv.info
        shipped.append(body)
    assert lines and shipped == lines, f"{len(shipped)} shipped, {len(lines)} in the file"
    record_figure("syslog", {"records_shipped": len(shipped)})


def test_a_burst_never_blocks_signing_and_ships_records_in_file_order(token: Token, tmp_path: Path,
                                                                      capture: SyslogCapture) -> None:
    """16 threads sign at full speed: a collector that keeps up gets every record, in file order."""
    run = ShimRun.make(tmp_path / "run", token, conf={"audit": {"syslog": True}})
    try:
        run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "50", "--threads", "16",
                   extra_env=signer_env(run), prefix=devlog_prefix(tmp_path, capture.path), timeout=120)
    finally:
        msgs = capture.close()
        capture.path.unlink(missing_ok=True)
    lines = run.audit_log.read_bytes().splitlines()
    index = {line: i for i, line in enumerate(lines)}
    positions = [index[RFC5424.match(m).group(7)] for m in msgs]  # type: ignore[union-attr]
    assert positions == sorted(positions), "syslog order differs from the file's"
    assert len(msgs) == len(lines), f"{len(lines) - len(msgs)} of {len(lines)} records not shipped"
    record_figure("syslog_burst", {"records": len(lines), "shipped": len(msgs), "dropped": len(lines) - len(msgs)})


def test_without_the_setting_nothing_is_shipped(token: Token, tmp_path: Path, capture: SyslogCapture) -> None:
    run = ShimRun.make(tmp_path / "run", token)
    try:
        run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "2", extra_env=signer_env(run),
                   prefix=devlog_prefix(tmp_path, capture.path))
    finally:
        msgs = capture.close()
        capture.path.unlink(missing_ok=True)
    assert run.audit_log.exists() and msgs == []
