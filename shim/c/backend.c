/* Opens the backend PKCS#11 module and asks it for its function list.
 *
 * The backend is opened RTLD_LOCAL and not RTLD_DEEPBIND: SoftHSM under
 * DEEPBIND binds glibc's allocator while BIND uses jemalloc, and crashes.
 * One exception: when the consumer loaded the shim RTLD_GLOBAL, the shim's
 * own C_* symbols are global and would interpose on the backend's internal
 * references to its C_* functions (endless recursion); DEEPBIND is then the
 * only way to make the backend bind to itself.  *deepbind reports it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include "core.h"
#include "sc4_ckr.h"

CK_RV sc4_load_backend(const char *path, CK_FUNCTION_LIST_PTR_PTR out, char *err, size_t errlen, int *deepbind)
{
    Dl_info info;
    void *global = dlsym(RTLD_DEFAULT, "C_GetFunctionList");
    int flags = RTLD_NOW | RTLD_LOCAL;
    void *handle;
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);

    *deepbind = 0;
    if (global && dladdr(global, &info) && info.dli_fname && strstr(info.dli_fname, "libsc4dnssec")) {
        flags |= RTLD_DEEPBIND;
        *deepbind = 1;
    }
    handle = dlopen(path, flags);
    if (!handle) {
        snprintf(err, errlen, "%s", dlerror());
        return SC4_CKR_GENERAL_ERROR;
    }
    get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(handle, "C_GetFunctionList");
    if (!get) {
        snprintf(err, errlen, "%s has no C_GetFunctionList", path);
        return SC4_CKR_GENERAL_ERROR;
    }
    return get(out);
}
