"""Shipping: with ``[audit] syslog = true`` every record also goes to /dev/log as RFC 5424.

The writer addresses the fixed path /dev/log (``AuditWriter(syslog_path=...)`` exists but
the shim's config does not expose it), so the child runs in a private mount namespace
whose /dev/log is the test's own datagram socket (rel_helpers.devlog_prefix).  The sender
never blocks: a collector that falls behind loses datagrams, and the sender announces how many
before its next record (``SyslogSender``).
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
    """16 threads sign at full speed: signing never waits for the collector, what is shipped comes in
    file order, and every record the collector did not get is accounted for.

    A starved collector (two busy cores) can fall behind the sender's socket buffer; the sender then
    drops instead of blocking and announces the count before its next record.  So the records missing
    before the last one shipped must add up exactly to the announced counts; only drops after the last
    shipped record (nothing followed to announce them) may stay unannounced.
    """
    run = ShimRun.make(tmp_path / "run", token, conf={"audit": {"syslog": True}})
    try:
        run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "50", "--threads", "16",
                   extra_env=signer_env(run), prefix=devlog_prefix(tmp_path, capture.path), timeout=120)
    finally:
        msgs = capture.close()
        capture.path.unlink(missing_ok=True)
    lines = run.audit_log.read_bytes().splitlines()
    index = {line: i for i, line in enumerate(lines)}
    positions: list[int] = []
    announced = 0
    for m in msgs:
        parsed = RFC5424.match(m)
        assert parsed, m[:200]
        if parsed.group(6) == b"dropped":
            notice = re.fullmatch(rb"(\d+) audit record\(s\) not shipped to syslog; see the audit file",
                                  parsed.group(7))
            assert notice, parsed.group(7)
            announced += int(notice.group(1))
            continue
        assert parsed.group(7) in index, parsed.group(7)[:200]
        positions.append(index[parsed.group(7)])
    assert positions and positions == sorted(positions), "syslog order differs from the file's"
    assert len(set(positions)) == len(positions), "a record was shipped twice"
    missing_before_last = positions[-1] + 1 - len(positions)
    assert missing_before_last == announced, f"{missing_before_last} records missing, {announced} announced"
    record_figure("syslog_burst", {"records": len(lines), "shipped": len(positions), "announced_drops": announced,
                                   "unannounced_after_last": len(lines) - 1 - positions[-1]})


def test_without_the_setting_nothing_is_shipped(token: Token, tmp_path: Path, capture: SyslogCapture) -> None:
    run = ShimRun.make(tmp_path / "run", token)
    try:
        run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "2", extra_env=signer_env(run),
                   prefix=devlog_prefix(tmp_path, capture.path))
    finally:
        msgs = capture.close()
        capture.path.unlink(missing_ok=True)
    assert run.audit_log.exists() and msgs == []
