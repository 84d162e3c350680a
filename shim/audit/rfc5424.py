"""Ship audit records to the local syslog socket as RFC 5424 messages.

The file is the source of truth; syslog is the DPS's external collection path.
Sending therefore never blocks and never raises: the socket is non-blocking and
every failure only increments ``dropped``.  A missing socket is retried at most
every ``RETRY_S`` seconds so a host without syslog pays no syscall per record.
"""

from __future__ import annotations

import socket
import time
from typing import Final

FACILITY_AUTHPRIV: Final = 10  # audit data is security-relevant, like sshd/sudo logs
SEV_ERR: Final = 3
SEV_INFO: Final = 6
RETRY_S: Final = 10.0


def _token(text: str, limit: int) -> str:
    # RFC 5424 header fields are PRINTUSASCII without spaces; "-" is NILVALUE.
    t = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return t or "-"


class SyslogSender:
    """Datagrams ``<PRI>1 TS HOST APP PID MSGID - MSG`` to a local unix socket."""

    def __init__(self, path: str = "/dev/log", *, app: str, facility: int = FACILITY_AUTHPRIV) -> None:
        self.path = path
        self.facility = facility
        self.app = _token(app, 48)
        self.host = _token(socket.gethostname(), 255)
        self.dropped = 0
        self._announced = 0  # drops already reported to the collector
        self._sock: socket.socket | None = None
        self._next_try = 0.0

    def _connect(self) -> socket.socket | None:
        now = time.monotonic()
        if now < self._next_try:
            return None
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            self._next_try = now + RETRY_S
            return None
        self._sock = s
        return s

    def send(self, ts: str, pid: int, msgid: str, msg: bytes, severity: int = SEV_INFO) -> None:
        """Send one message; counts a drop instead of raising on any failure."""
        sock = self._sock or self._connect()
        if sock is None:
            self.dropped += 1
            return
        header = f"<{self.facility * 8 + severity}>1 {ts} {self.host} {self.app} {pid} {_token(msgid, 32)} - "
        try:
            if self.dropped > self._announced:
                # The collector must learn that it lost records (the file still has them).
                lost = self.dropped - self._announced
                sock.send(f"<{self.facility * 8 + SEV_ERR}>1 {ts} {self.host} {self.app} {pid} dropped - "
                          f"{lost} audit record(s) not shipped to syslog; see the audit file".encode("ascii"))
                self._announced = self.dropped
            sock.send(header.encode("ascii") + msg)
        except OSError:
            # Full queue or a restarted daemon: drop this one, reconnect next time.
            self.dropped += 1
            self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
