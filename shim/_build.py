"""Build-time generation of the module's C sources (used by setup.py).

Two shared objects come out of the build, both inside the ``shim`` package:

``libsc4dnssec.so``
    the PKCS#11 module consumers load (C only, no libpython dependency);
``_sc4dnssec_core.<ext>``
    the cffi embedding library holding the Python implementation.

Both are generated from ``shim/functions.py`` so the C ABI is described once.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from cffi import FFI

from shim.functions import C_ONLY, FUNCTIONS

HERE = Path(__file__).resolve().parent
C_DIR = HERE / "c"
CORE_MODULE = "_sc4dnssec_core"
STUB_NAME = "libsc4dnssec.so"


def function_list_struct() -> str:
    fields = "\n".join(f"    CK_RV (*{f.name})({f.c_params});" for f in FUNCTIONS)
    return f"struct CK_FUNCTION_LIST {{\n    CK_VERSION version;\n{fields}\n}};\n"


def stub_source() -> str:
    parts = [(C_DIR / "stub.c").read_text(), function_list_struct()]
    for f in FUNCTIONS:
        if f.name in C_ONLY:
            continue
        parts.append(
            f"CK_RV {f.name}({f.c_params})\n{{\n"
            f"    if (!ready())\n        return SC4_CKR_GENERAL_ERROR;\n"
            f"    return core->{f.name}({f.c_args});\n}}\n"
        )
    slots = ",\n    ".join(f.name for f in FUNCTIONS)
    parts.append(f"static CK_FUNCTION_LIST stub_list = {{\n    {{2, 40}},\n    {slots}\n}};\n")
    return "\n".join(parts)


def python_paths() -> list[str]:
    """Where the building interpreter keeps packages: the embedded interpreter
    starts with libpython's default prefix and would not see a venv."""
    paths = sysconfig.get_paths()
    return sorted({paths["purelib"], paths["platlib"]})


def core_ffi() -> FFI:
    ffi = FFI()
    header = (C_DIR / "cryptoki.h").read_text()
    struct = function_list_struct()
    callbacks = "\n".join(
        f'extern "Python+C" CK_RV sc4py_{f.name}({f.c_params});' for f in FUNCTIONS if f.name not in C_ONLY
    )
    ffi.embedding_api("int sc4_boot(void);")
    ffi.cdef(header + struct + callbacks + "\nCK_FUNCTION_LIST *sc4_core_functions(void);\n"
             "const char *sc4_core_path(void);\n"
             "unsigned long sc4_fork_generation;\n"
             "long long sc4_audit_append(int fd, long long expected_size, const char *data, size_t len,"
             " int sync);\n"
             "CK_RV sc4_load_backend(const char *path, CK_FUNCTION_LIST_PTR_PTR out, char *err, size_t errlen,"
             " int *deepbind);\n")
    slots = ",\n    ".join(
        "sc4_core_get_function_list" if f.name in C_ONLY else f"sc4py_{f.name}" for f in FUNCTIONS
    )
    prototypes = "\n".join(f"CK_RV sc4py_{f.name}({f.c_params});" for f in FUNCTIONS if f.name not in C_ONLY)
    source = f"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <pthread.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>
#include "cryptoki.h"
{struct}
{prototypes}
static CK_FUNCTION_LIST core_list;
static CK_RV sc4_core_get_function_list(CK_FUNCTION_LIST_PTR_PTR pp)
{{
    if (!pp) return 0x7UL;
    *pp = &core_list;
    return 0x0UL;
}}
static CK_FUNCTION_LIST core_list = {{
    {{2, 40}},
    {slots}
}};
CK_FUNCTION_LIST *sc4_core_functions(void) {{ return &core_list; }}
/* Counts forks seen in this process image.  A C host (named) forks without
 * running Python's at-fork hooks, so the Python side compares this counter
 * to notice that it now lives in a child.  A global read through cffi, not a
 * function call: cffi releases the GIL around every C call, and this check
 * runs on every PKCS#11 call. */
unsigned long sc4_fork_generation;
static void sc4_after_fork_child(void) {{ sc4_fork_generation++; }}
__attribute__((constructor)) static void sc4_core_init(void)
{{
    pthread_atfork(NULL, NULL, sc4_after_fork_child);
}}

/* The audit writer's locked section in one call, so Python gives up the GIL
 * once per record instead of once per syscall (flock, lseek, write, flock):
 * with several host threads each hand-off is a context switch.  Appends
 * ``data`` (one complete record line built by shim/audit/writer.py) only if
 * the file still has ``expected_size`` bytes, i.e. nobody else appended since
 * this process's last record.  Returns the new size; -2 if the size differs
 * (the writer then takes its Python path, which re-reads the tail); -1 with
 * errno set on an I/O error, after cutting any partial line of ours. */
long long sc4_audit_append(int fd, long long expected_size, const char *data, size_t len, int sync)
{{
    off_t size;
    size_t done = 0;
    int err;
    if (flock(fd, LOCK_EX) != 0)
        return -1;
    size = lseek(fd, 0, SEEK_END);
    if (size < 0 || (long long)size != expected_size) {{
        err = errno;
        flock(fd, LOCK_UN);
        errno = err;
        return size < 0 ? -1 : -2;
    }}
    while (done < len) {{
        ssize_t n = write(fd, data + done, len - done);
        if (n <= 0) {{
            err = n < 0 ? errno : EIO;
            if (done && ftruncate(fd, size) != 0) {{ /* the next writer's recovery record covers it */ }}
            flock(fd, LOCK_UN);
            errno = err;
            return -1;
        }}
        done += (size_t)n;
    }}
    if (sync && fdatasync(fd) != 0) {{
        err = errno;
        flock(fd, LOCK_UN);
        errno = err;
        return -1;
    }}
    flock(fd, LOCK_UN);
    return (long long)size + (long long)len;
}}

/* The backend is opened RTLD_LOCAL and not RTLD_DEEPBIND: SoftHSM under
 * DEEPBIND binds glibc's allocator while BIND uses jemalloc, and crashes.
 * One exception: when the consumer loaded the shim RTLD_GLOBAL, the shim's
 * own C_* symbols are global and would interpose on the backend's internal
 * references to its C_* functions (endless recursion); DEEPBIND is then the
 * only way to make the backend bind to itself.  *deepbind reports it. */
CK_RV sc4_load_backend(const char *path, CK_FUNCTION_LIST_PTR_PTR out, char *err, size_t errlen,
                       int *deepbind)
{{
    Dl_info info;
    void *global = dlsym(RTLD_DEFAULT, "C_GetFunctionList");
    int flags = RTLD_NOW | RTLD_LOCAL;
    *deepbind = 0;
    if (global && dladdr(global, &info) && info.dli_fname && strstr(info.dli_fname, "libsc4dnssec")) {{
        flags |= RTLD_DEEPBIND;
        *deepbind = 1;
    }}
    void *handle = dlopen(path, flags);
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
    if (!handle) {{
        snprintf(err, errlen, "%s", dlerror());
        return 0x5UL;
    }}
    get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(handle, "C_GetFunctionList");
    if (!get) {{
        snprintf(err, errlen, "%s has no C_GetFunctionList", path);
        return 0x5UL;
    }}
    return get(out);
}}
const char *sc4_core_path(void)
{{
    Dl_info info;
    return dladdr((void *)&sc4_core_path, &info) ? info.dli_fname : "";
}}
"""
    ffi.set_source(CORE_MODULE, source)
    init = f"""
import os, site, sys
from {CORE_MODULE} import ffi, lib
_root = os.path.dirname(os.path.dirname(ffi.string(lib.sc4_core_path()).decode()))
# The venv (or prefix) that built us goes first, ahead of libpython's own
# site-packages, so the dependencies match the ones the module was built with.
for _p in {python_paths()!r}:
    if os.path.isdir(_p):
        site.addsitedir(_p)
        sys.path.remove(_p)
        sys.path.insert(0, _p)
if _root in sys.path:
    sys.path.remove(_root)
sys.path.insert(0, _root)
from shim import runtime
runtime.boot(ffi, lib)

@ffi.def_extern()
def sc4_boot():
    return 1
"""
    ffi.embedding_init_code(init)
    return ffi


def libpython() -> tuple[str, str]:
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    return f"{libdir}/{soname}", soname
