/* The module consumers load: a small C loader in front of the Python shim.
 *
 * Why a separate stub instead of exporting the cffi library directly:
 *  - consumers dlopen modules with RTLD_LOCAL (pkcs11-tool, libp11) or
 *    RTLD_DEEPBIND (pkcs11-provider).  The stub loads libpython and the cffi
 *    core with RTLD_GLOBAL and without DEEPBIND, so extension modules find
 *    libpython's symbols and Python, cffi and the host share one allocator;
 *  - the stub starts the interpreter itself, isolated from the host's
 *    environment (shim/c/interpreter.c), before cffi would start a default
 *    one; any failure to start is CKR_GENERAL_ERROR and a message on
 *    stderr/syslog, never an abort of the host;
 *  - a failed Python start makes cffi return 0 (= CKR_OK) from every entry;
 *    the stub turns it into CKR_GENERAL_ERROR as well;
 *  - C_GetFunctionList / C_GetInterface* answer without starting Python; the
 *    calls are counted (discovery.h) and the core records the counts.
 * Every C_* entry point is exported (BIND 9.16 dlsyms each name); the
 * forwarding entries are generated (sc4_stub_entries.c). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include "stub.h"
#include "sc4_ckr.h"
#include "discovery.h"

#define SC4_DISCOVERY_VERSIONS 4

/* Written with relaxed atomics from any thread, before and after the core is loaded; the core
 * reads them through the pointer it is handed at load. */
static struct sc4_discovery discovery;

static CK_RV counted(unsigned long *counter, CK_RV rv)
{
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
    if (rv != SC4_CKR_OK)
        __atomic_fetch_add(&discovery.refused, 1, __ATOMIC_RELAXED);
    return rv;
}

/* The core's list once loaded and booted; read without the lock on the hot
 * path.  load_lock covers the one attempt to load, and is held across fork()
 * so that a child never inherits a half-done start. */
static CK_FUNCTION_LIST *core;
static int load_tried;
static pthread_mutex_t load_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP; /* a fork during the start */

/* The core's at-fork work on the interpreter (shim/c/interpreter.c), known
 * once the core is loaded.  Called from here rather than registered by the
 * core so that the order is fixed: load_lock first, then the GIL, as a start
 * in another thread takes them. */
static void (*core_fork_prepare)(void);
static void (*core_fork_parent)(void);
static void (*core_fork_child)(void);

static void report(const char *what, const char *detail)
{
    fprintf(stderr, "smartcards4dnssec: %s: %s\n", what, detail ? detail : "");
    syslog(LOG_ERR, "smartcards4dnssec: %s: %s", what, detail ? detail : "");
}

static void fork_prepare(void)
{
    pthread_mutex_lock(&load_lock);
    if (core_fork_prepare)
        core_fork_prepare();
}

static void fork_parent(void)
{
    if (core_fork_parent)
        core_fork_parent();
    pthread_mutex_unlock(&load_lock);
}

static void fork_child(void)
{
    if (core_fork_child)
        core_fork_child();
    pthread_mutex_unlock(&load_lock);
}

__attribute__((constructor)) static void stub_init(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void load_core(void)
{
    Dl_info self;
    char path[4096], err[512];
    void *handle;
    int (*start)(char *, size_t);
    int (*boot)(void);
    CK_FUNCTION_LIST *(*functions)(void);
    void (*set_discovery)(const struct sc4_discovery *);

    if (!dladdr((void *)&load_core, &self) || !self.dli_fname) {
        report("cannot locate the module's own path", dlerror());
        return;
    }
    if (!dlopen(SC4_LIBPYTHON, RTLD_NOW | RTLD_GLOBAL) && !dlopen(SC4_LIBPYTHON_SONAME, RTLD_NOW | RTLD_GLOBAL)) {
        report("cannot load libpython", dlerror());
        return;
    }
    const char *slash = strrchr(self.dli_fname, '/');
    size_t dirlen = slash ? (size_t)(slash - self.dli_fname) + 1 : 0;
    if (dirlen + strlen(SC4_CORE_NAME) + 1 > sizeof(path)) {
        report("module path too long", self.dli_fname);
        return;
    }
    memcpy(path, self.dli_fname, dirlen);
    strcpy(path + dirlen, SC4_CORE_NAME);
    handle = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (!handle) {
        report("cannot load the Python core", dlerror());
        return;
    }
    start = (int (*)(char *, size_t))dlsym(handle, "sc4_start_python");
    boot = (int (*)(void))dlsym(handle, "sc4_boot");
    functions = (CK_FUNCTION_LIST * (*)(void)) dlsym(handle, "sc4_core_functions");
    core_fork_prepare = (void (*)(void))dlsym(handle, "sc4_fork_prepare");
    core_fork_parent = (void (*)(void))dlsym(handle, "sc4_fork_parent");
    core_fork_child = (void (*)(void))dlsym(handle, "sc4_fork_child");
    set_discovery = (void (*)(const struct sc4_discovery *))dlsym(handle, "sc4_core_set_discovery");
    if (!start || !boot || !functions || !core_fork_prepare || !core_fork_parent || !core_fork_child
        || !set_discovery) {
        core_fork_prepare = core_fork_parent = core_fork_child = NULL;
        report("the Python core lacks its entry points", path);
        return;
    }
    set_discovery(&discovery);
    if (!start(err, sizeof err)) {
        report("the embedded Python failed to start", err);
        return;
    }
    if (!boot()) {
        report("the embedded Python failed to start (traceback above)", path);
        return;
    }
    __atomic_store_n(&core, functions(), __ATOMIC_RELEASE);
}

CK_FUNCTION_LIST *sc4_stub_core(void)
{
    CK_FUNCTION_LIST *list = __atomic_load_n(&core, __ATOMIC_ACQUIRE);
    if (list)
        return list;
    pthread_mutex_lock(&load_lock);
    if (!load_tried) {
        load_tried = 1;
        load_core();
    }
    list = core;
    pthread_mutex_unlock(&load_lock);
    return list;
}

static CK_RV get_function_list(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (!ppFunctionList)
        return SC4_CKR_ARGUMENTS_BAD;
    *ppFunctionList = &sc4_stub_list;
    return SC4_CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    return counted(&discovery.function_list, get_function_list(ppFunctionList));
}

/* PKCS#11 3.0 discovery, offering the v2.40 list: DNSSEC signers need
 * nothing from 3.0, and a 3.0 table would be 24 more functions to fake. */
static CK_INTERFACE interface_v240 = {(CK_CHAR *)"PKCS 11", &sc4_stub_list, 0};

static CK_RV get_interface_list(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
    if (!pulCount)
        return SC4_CKR_ARGUMENTS_BAD;
    if (!pInterfacesList) {
        *pulCount = 1;
        return SC4_CKR_OK;
    }
    if (*pulCount < 1) {
        *pulCount = 1;
        return SC4_CKR_BUFFER_TOO_SMALL;
    }
    pInterfacesList[0] = interface_v240;
    *pulCount = 1;
    return SC4_CKR_OK;
}

CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
    return counted(&discovery.interface_list, get_interface_list(pInterfacesList, pulCount));
}

static CK_RV get_interface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                           CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
    if (!ppInterface)
        return SC4_CKR_ARGUMENTS_BAD;
    if (pInterfaceName && strcmp((const char *)pInterfaceName, "PKCS 11") != 0)
        return SC4_CKR_ARGUMENTS_BAD;
    if (pVersion && (pVersion->major != 2 || pVersion->minor != 40))
        return SC4_CKR_ARGUMENTS_BAD;
    if (flags & ~interface_v240.flags)
        return SC4_CKR_ARGUMENTS_BAD;
    *ppInterface = &interface_v240;
    return SC4_CKR_OK;
}

CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                     CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
    int name = !pInterfaceName ? 0 : strcmp((const char *)pInterfaceName, "PKCS 11") == 0 ? 1 : 2;
    int version = !pVersion                                      ? 0
                  : pVersion->major == 2 && pVersion->minor == 40 ? 1
                  : pVersion->major == 3                          ? 2
                                                                  : 3;
    if (flags)
        __atomic_fetch_add(&discovery.flags, 1, __ATOMIC_RELAXED);
    return counted(&discovery.interface[name * SC4_DISCOVERY_VERSIONS + version],
                   get_interface(pInterfaceName, pVersion, ppInterface, flags));
}
