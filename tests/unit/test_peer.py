"""shim.peer over real sockets: the client connection of a unix stream socket, nothing for any
other stdin (a file, a pipe, TCP, a datagram socket)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from shim.peer import _hex_addr, client_connection, tcp_connections

CONNECT = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nsys.stdin.read()\n"


def test_a_unix_stream_connection_names_the_connecting_process(tmp_path: Path) -> None:
    path = str(tmp_path / "card.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen(1)
        child = subprocess.Popen([sys.executable, "-c", CONNECT, path], stdin=subprocess.PIPE)
        try:
            conn, _ = srv.accept()
            with conn:
                got = client_connection(conn.fileno())
                os.fstat(conn.fileno())  # the descriptor is still open: only a duplicate was closed
        finally:
            child.communicate(b"")
    assert got is not None
    assert got["pid"] == child.pid and got["uid"] == os.geteuid() and got["gid"] == os.getegid(), got
    assert got["socket"] == path and got["comm"] == Path(sys.executable).name[:15], got
    assert "title" not in got and "tcp" not in got, got  # not an ssh peer: its command line is not read


def test_anything_else_is_no_client(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    with f.open() as fh:
        assert client_connection(fh.fileno()) is None
    r, w = os.pipe()
    try:
        assert client_connection(r) is None
    finally:
        os.close(r)
        os.close(w)
    with socket.create_server(("127.0.0.1", 0)) as srv, \
            socket.create_connection(srv.getsockname()) as c:
        assert client_connection(c.fileno()) is None
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        assert client_connection(a.fileno()) is None
    assert client_connection(1_000_000) is None  # not open


def test_tcp_connections_of_this_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname()) as c:
        peer, _ = srv.accept()
        with peer:
            port, lport = srv.getsockname()[1], c.getsockname()[1]
            got = tcp_connections(os.getpid())
    assert f"127.0.0.1:{lport} -> 127.0.0.1:{port}" in got and f"127.0.0.1:{port} -> 127.0.0.1:{lport}" in got, got
    assert _hex_addr("0100007F:0016") == "127.0.0.1:22"
    assert _hex_addr("00000000000000000000000001000000:0035") == "[::1]:53"
