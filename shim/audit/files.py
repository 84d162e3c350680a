"""Opening audit files safely: no symlinks, regular files only, no shared fallback directory.

The shim runs as root inside named.  A symlink or a hard link planted in the
log's directory would redirect root's appends to another file, and a device
such as ``/dev/null`` as the log would swallow every record while the
verifier reported an empty, intact log.  So the writer and the verifier open
audit files only through these functions.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from typing import Final

#: Mode of directories the writer creates for a log: nobody else may plant files there.
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o640


def _refuse(path: str, why: str, code: int = errno.EINVAL) -> OSError:
    return OSError(code, f"{path}: {why}")


def check_regular(fd: int, path: str) -> os.stat_result:
    """``fstat(fd)``, or OSError if it is not a plain regular file with one name."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "not a regular file: refusing it as an audit file")
    if st.st_nlink > 1:
        raise _refuse(path, f"has {st.st_nlink} hard links: refusing it as an audit file "
                      "(another name could be a planted link to a file that must not be written)")
    return st


def _check_parent(parent: str) -> None:
    st = os.stat(parent)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise _refuse(parent, "directory is writable by everyone without the sticky bit: "
                      "another user could replace the audit file", errno.EPERM)


def open_append(path: str, mode: int = FILE_MODE) -> tuple[int, os.stat_result]:
    """Open ``path`` for appending (created if missing, parent directories with DIR_MODE).

    Refuses a symlink as the last component (``O_NOFOLLOW``), anything but a
    regular file with one link, and a world-writable directory without the
    sticky bit.  Returns the descriptor and its ``fstat``.
    """
    if not path:
        raise OSError(errno.ENOENT, "no audit log path: set SC4DNSSEC_AUDIT_LOG or [audit] path "
                      "(there is no writable /var/log/sc4dnssec and no home directory to fall back to)")
    parent = os.path.dirname(os.path.abspath(path))
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags, mode)
        except FileNotFoundError:
            os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
            fd = os.open(path, flags, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link: refusing to follow it", errno.ELOOP) from e
        raise
    try:
        _check_parent(parent)
        st = check_regular(fd, path)
    except OSError:
        os.close(fd)
        raise
    return fd, st


def open_read(path: str) -> int:
    """Open an audit file for reading; OSError unless it is a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refuse(path, "not a regular file: nothing to verify")
    except OSError:
        os.close(fd)
        raise
    return fd


def default_path(env: Mapping[str, str], system_dir: str) -> str:
    """``system_dir/audit.jsonl`` where writable, else the user's own state directory.

    Never a shared directory: with neither HOME nor XDG_STATE_HOME (and no
    home in the password database) the answer is ``""``, which the writer
    refuses with a clear message, so the shim's fail-closed/fail-open policy
    applies instead of a log under /tmp that another user could create first.
    """
    try:
        os.makedirs(system_dir, mode=0o750, exist_ok=True)
        if os.access(system_dir, os.W_OK):
            return os.path.join(system_dir, "audit.jsonl")
    except OSError:
        pass
    state = env.get("XDG_STATE_HOME")
    if not state:
        home = env.get("HOME") or _passwd_home()
        if not home or home == "/":
            return ""
        state = os.path.join(home, ".local", "state")
    return os.path.join(state, "sc4dnssec", "audit.jsonl")


def _passwd_home() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir
    except (KeyError, ImportError):
        return ""
