"""The embedded interpreter's first code, run once inside the host by cffi.

shim/_build.py hands this file's text to ``ffi.embedding_init_code``; it is not imported.  The
interpreter was started isolated (shim/c/interpreter.c): ``sys.path`` holds the standard library
of the interpreter that built the module and the site directories the build recorded, nothing
else.  This adds the shim's own root, processes those directories' .pth files, then boots the
shim.  In a Python host the interpreter is the host's; the same directories are added if missing.
"""

import os
import site
import sys

from _sc4dnssec_core import ffi, lib  # type: ignore[import-not-found]  # registered by cffi at start


def _site_dirs() -> list[str]:
    dirs = []
    i = 0
    while (p := lib.sc4_site_dir(i)) != ffi.NULL:
        dirs.append(ffi.string(p).decode())
        i += 1
    return dirs


def _extend_path() -> None:
    """The shim's root ahead of the site directories (a stale installed copy must not win), both
    after the standard library (nothing shadows it)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(ffi.string(lib.sc4_core_path()).decode())))
    if root not in sys.path:
        sys.path.append(root)
    for d in _site_dirs():
        if os.path.isdir(d):
            site.addsitedir(d)


_extend_path()

from shim import runtime  # noqa: E402 - importable only once the path is set

runtime.boot(ffi, lib)


@ffi.def_extern()  # type: ignore[misc]
def sc4_boot() -> int:
    """The loader's check that the init code ran: cffi answers 0 when it failed."""
    return 1
