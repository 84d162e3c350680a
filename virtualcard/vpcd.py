"""The vpcd transport: drive a card over vsmartcard's virtual reader protocol.

vpcd (the pcscd reader driver from ``vsmartcard-vpcd``) listens on a TCP port per reader; the
card connects to it.  Every message is a 2-byte big-endian length and a payload.  A 1-byte payload
is a control code (0 power off, 1 power on, 2 reset, 4 get ATR); anything longer is a command
APDU, answered with a length-prefixed response APDU.  vpcd asks for the ATR on every presence
poll, and a closed connection is a removed card.

Delayed ACKs cost ~45 ms per APDU, so TCP_NODELAY is set once and TCP_QUICKACK (which Linux
clears again after use) is re-armed after every recv.

Run a card process with ``python -m virtualcard.vpcd --state DIR --port PORT``.  SIGUSR1 removes
the card (closes the connection), SIGUSR2 inserts it again, SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
from types import FrameType

from . import schsm
from .piv import ATR, PIVCard
from .profiles import get_profile
from .state import CardState

log = logging.getLogger(__name__)

CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0, 1, 2, 4
# pcscd polls reader presence every 400 ms; a card that comes back faster than that is never
# seen as removed and pcscd keeps the old ATR/handles ("stale ATR").
MIN_ABSENCE_S = 1.0


def _quickack(sock: socket.socket) -> None:
    if hasattr(socket, "TCP_QUICKACK"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        _quickack(sock)
        if not chunk:
            return None
        buf.extend(chunk)
    return bytes(buf)


class VirtualReaderLink:
    """One card's connection to one vpcd reader, with run-time removal and insertion."""

    def __init__(self, card: PIVCard | schsm.SmartCardHSM, host: str, port: int, atr: bytes = ATR) -> None:
        self.card = card
        self.host, self.port = host, port
        self.atr = atr
        self.inserted = True
        self.running = True
        self._sock: socket.socket | None = None
        self._removed_at = 0.0

    # -- control (signal handlers call these) -------------------------------------------
    def remove(self) -> None:
        if self.inserted:
            self.inserted = False
            self._removed_at = time.monotonic()
            self._drop()

    def insert(self) -> None:
        self.inserted = True

    def stop(self) -> None:
        self.running = False
        self._drop()

    def _drop(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- main loop ---------------------------------------------------------------------
    def run(self) -> None:
        while self.running:
            if not self.inserted:
                time.sleep(0.05)
                continue
            wait = MIN_ABSENCE_S - (time.monotonic() - self._removed_at)
            if wait > 0:
                time.sleep(wait)
                continue
            sock = self._connect()
            if sock is None:
                time.sleep(0.1)
                continue
            self._sock = sock
            log.info("card inserted into %s:%d", self.host, self.port)
            try:
                self._serve(sock)
            except OSError as e:
                log.info("connection lost: %s", e)
            finally:
                self._sock = None
                sock.close()
                self.card.reset()
                if self.inserted and self.running:
                    # reader went away (pcscd stopped): count it as an absence too
                    self._removed_at = time.monotonic()
            log.info("card out of %s:%d", self.host, self.port)

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=1.0)
        except OSError:
            return None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _quickack(sock)
        return sock

    def _serve(self, sock: socket.socket) -> None:
        while self.running and self.inserted:
            head = _recv_exact(sock, 2)
            if head is None:
                return
            size = int.from_bytes(head, "big")
            payload = _recv_exact(sock, size) if size else b""
            if payload is None:
                return
            if len(payload) == 1:
                code = payload[0]
                if code == CTRL_ATR:
                    self._send(sock, self.atr)
                elif code in (CTRL_OFF, CTRL_ON, CTRL_RESET):
                    self.card.reset()
                else:
                    log.warning("unknown vpcd control code %d", code)
                continue
            response = self.card.process(payload)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(">> %s\n<< %s", payload.hex(), response.hex())
            self._send(sock, response)

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        sock.sendall(len(data).to_bytes(2, "big") + data)
        _quickack(sock)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m virtualcard.vpcd", description=__doc__)
    ap.add_argument("--state", required=True, help="card state directory (initialised)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=35963)
    ap.add_argument("--profile", default=None, help="overrides the profile stored in the state")
    ap.add_argument("--latency-ms", type=float, default=None, help="delay per private-key operation")
    ap.add_argument("--removed", action="store_true", help="start with the card out of the reader")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s card[%(process)d] %(message)s",
        stream=sys.stderr,
    )
    link: VirtualReaderLink
    if schsm.HSMState.is_schsm(args.state):
        hsm = schsm.HSMState(args.state)
        profile = get_profile(args.profile or hsm.counters.profile, args.latency_ms, family="sc-hsm")
        link = VirtualReaderLink(schsm.SmartCardHSM(hsm, profile), args.host, args.port, atr=schsm.ATR)
    else:
        state = CardState(args.state)
        if not state.initialised:
            ap.error(f"{args.state} is not an initialised card (run virtualcard provision)")
        profile = get_profile(args.profile or state.counters.profile, args.latency_ms, family="piv")
        link = VirtualReaderLink(PIVCard(state, profile), args.host, args.port)
    if args.removed:
        link.inserted = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            link.remove()
        elif signum == signal.SIGUSR2:
            link.insert()
        else:
            link.stop()

    for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    link.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
