/* The core's own C_GetFunctionList and where the core lives. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include "core.h"
#include "sc4_build_paths.h"
#include "sc4_ckr.h"

CK_RV sc4_core_get_function_list(CK_FUNCTION_LIST_PTR_PTR pp)
{
    if (!pp)
        return SC4_CKR_ARGUMENTS_BAD;
    *pp = &sc4_core_list;
    return SC4_CKR_OK;
}

CK_FUNCTION_LIST *sc4_core_functions(void)
{
    return &sc4_core_list;
}

/* The shim package is found from the core's own path, not from sys.path:
 * the embedded interpreter starts with the standard library only. */
const char *sc4_core_path(void)
{
    Dl_info info;
    return dladdr((void *)&sc4_core_path, &info) && info.dli_fname ? info.dli_fname : "";
}

/* The i-th site directory of the interpreter that built the module (its
 * venv's site-packages), NULL past the end. */
const char *sc4_site_dir(int i)
{
    if (i < 0 || (size_t)i >= sizeof sc4_site_dirs / sizeof sc4_site_dirs[0])
        return NULL;
    return sc4_site_dirs[i];
}
