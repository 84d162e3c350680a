"""Shipping: with ``[audit] syslog = true`` every record also goes to /dev/log as RFC 5424.

The writer addresses the fixed path /dev/log (``AuditWriter(syslog_path=...)`` exists but
the shim's config does not expose it), so the child runs in a private mount namespace
whose /dev/log is the test's own datagram socket (rel_helpers.devlog_prefix).
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
        run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "10", "--threads", "2",
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


def test_without_the_setting_nothing_is_shipped(token: Token, tmp_path: Path, capture: SyslogCapture) -> None:
    run = ShimRun.make(tmp_path / "run", token)
    try:
        run.python(SIGNER, "--out", str(tmp_path / "sigs"), "--count", "2", extra_env=signer_env(run),
                   prefix=devlog_prefix(tmp_path, capture.path))
    finally:
        msgs = capture.close()
        capture.path.unlink(missing_ok=True)
    assert run.audit_log.exists() and msgs == []
