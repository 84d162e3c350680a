/* The module consumers load: a small C loader in front of the Python shim.
 *
 * Why a separate stub instead of exporting the cffi library directly:
 *  - consumers dlopen modules with RTLD_LOCAL (pkcs11-tool, libp11) or
 *    RTLD_DEEPBIND (pkcs11-provider).  The stub loads libpython and the cffi
 *    core with RTLD_GLOBAL and without DEEPBIND, so extension modules find
 *    libpython's symbols and Python, cffi and the host share one allocator;
 *  - a failed Python start makes cffi return 0 (= CKR_OK) from every entry;
 *    the stub turns it into CKR_GENERAL_ERROR and a message on stderr/syslog;
 *  - C_GetFunctionList / C_GetInterface* answer without starting Python.
 * Every C_* entry point below is exported (BIND 9.16 dlsyms each name). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include "cryptoki.h"

#define SC4_CKR_OK 0x0UL
#define SC4_CKR_GENERAL_ERROR 0x5UL
#define SC4_CKR_ARGUMENTS_BAD 0x7UL
#define SC4_CKR_BUFFER_TOO_SMALL 0x150UL

static CK_FUNCTION_LIST *core;
static pthread_once_t core_once = PTHREAD_ONCE_INIT;

static void report(const char *what, const char *detail)
{
    fprintf(stderr, "smartcards4dnssec: %s: %s\n", what, detail ? detail : "");
    syslog(LOG_ERR, "smartcards4dnssec: %s: %s", what, detail ? detail : "");
}

static void load_core(void)
{
    Dl_info self;
    char path[4096];
    void *handle;
    int (*boot)(void);
    CK_FUNCTION_LIST *(*functions)(void);

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
    boot = (int (*)(void))dlsym(handle, "sc4_boot");
    functions = (CK_FUNCTION_LIST * (*)(void)) dlsym(handle, "sc4_core_functions");
    if (!boot || !functions) {
        report("the Python core lacks its entry points", path);
        return;
    }
    if (!boot()) {
        report("the embedded Python failed to start (traceback above)", path);
        return;
    }
    core = functions();
}

static int ready(void)
{
    pthread_once(&core_once, load_core);
    return core != NULL;
}

static CK_FUNCTION_LIST stub_list;

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (!ppFunctionList)
        return SC4_CKR_ARGUMENTS_BAD;
    *ppFunctionList = &stub_list;
    return SC4_CKR_OK;
}

/* PKCS#11 3.0 discovery, offering the v2.40 list: DNSSEC signers need
 * nothing from 3.0, and a 3.0 table would be 24 more functions to fake. */
static CK_INTERFACE interface_v240 = {(CK_CHAR *)"PKCS 11", &stub_list, 0};

CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
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

CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
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

/* Generated below: struct CK_FUNCTION_LIST, one forwarding entry point per
 * function, and the stub's function list. */
