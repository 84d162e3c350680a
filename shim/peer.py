"""Who is on the other end of the card host's server connection (docs/remote.md).

Loaded by the runtime in every process, so it imports nothing beyond os, socket, stat and
struct, and reads only /proc of the peer it was handed.
"""

from __future__ import annotations

import os
import socket
import stat
import struct

#: What ``client_connection`` reads of the peer's process title, at most (characters).
MAX_TITLE = 128
#: Peers whose process title is recorded: sshd's names the authenticated user
#: (``sshd: USER@notty``; OpenSSH 10's session process is ``sshd-session``).  No other
#: peer's command line is read: a local client's may carry a PIN.
SSHD_COMMS = frozenset({"sshd", "sshd-session"})
#: Peers whose TCP connections are recorded: sshd (``-L``: the ssh client's address and port, as
#: sshd logs them) and the ssh client (``-R`` from the card host: the signer host's sshd).
SSH_COMMS = SSHD_COMMS | {"ssh"}


def _read_proc(pid: int, name: str, limit: int = 4096) -> str | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _hex_addr(text: str) -> str:
    """``0100A8C0:0016`` (/proc/net/tcp, host byte order per 32-bit word) as ``192.168.0.1:22``."""
    addr, port = text.split(":")
    raw = b"".join(int(addr[i:i + 8], 16).to_bytes(4, "little") for i in range(0, len(addr), 8))
    host = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
    return f"[{host}]:{int(port, 16)}" if len(raw) == 16 else f"{host}:{int(port, 16)}"


def tcp_connections(pid: int) -> list[str]:
    """The established TCP connections process ``pid`` holds, ``local -> remote``.

    Needs to read /proc/PID/fd (the same user, or root); an empty list otherwise."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor, for one)
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        text = _read_proc(pid, f"net/{table}", 1 << 20) or ""
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) >= 10 and f[3] == "01" and f[9] in inodes:  # 01: ESTABLISHED
                try:
                    out.append(f"{_hex_addr(f[1])} -> {_hex_addr(f[2])}")
                except ValueError:
                    continue
    return sorted(out)


def client_connection(fd: int = 0) -> dict[str, object] | None:
    """Who is on the other end of ``fd``, when it is a connected unix stream socket.

    ``p11-kit server`` hands each accepted connection to ``p11-kit-remote`` as its stdin and
    stdout, so inside the card host's server this is the client connection: the socket's path and
    the peer's SO_PEERCRED (pid, uid, gid, as the kernel saw them at connect()), the peer's
    ``comm``, and for an ssh peer its title and TCP connections.  Over ssh forwarding the peer is
    the sshd (``-L``) or ssh (``-R``) process on this host, not the signer: which ssh connection,
    not which signer process.  None when ``fd`` is anything else (named's stdin is /dev/null)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if s.family != socket.AF_UNIX or s.type != socket.SOCK_STREAM:
            return None
        pid, uid, gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
        name = s.getsockname()
    except OSError:
        return None
    finally:
        s.close()
    out: dict[str, object] = {"socket": name if isinstance(name, str) and name else None,
                              "pid": pid, "uid": uid, "gid": gid}
    comm = _read_proc(pid, "comm", 64)
    if comm is not None:
        out["comm"] = comm.strip()
    if comm is not None and comm.strip() in SSHD_COMMS:
        title = (_read_proc(pid, "cmdline", MAX_TITLE * 4) or "").replace("\0", " ").strip()
        out["title"] = title[:MAX_TITLE]
    if comm is not None and comm.strip() in SSH_COMMS:
        out["tcp"] = tcp_connections(pid)
    return out
