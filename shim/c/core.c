/* The core's own C_GetFunctionList, where the core lives, and the loader's discovery counts. */
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

/* The loader's counters (stub.c), handed over before the interpreter starts; NULL when the core
 * was loaded without the loader. */
static const struct sc4_discovery *discovery;

void sc4_core_set_discovery(const struct sc4_discovery *counts)
{
    discovery = counts;
}

/* A copy of the counters; 0 when there is no loader. */
int sc4_discovery_read(struct sc4_discovery *out)
{
    if (!discovery)
        return 0;
    const unsigned long *from = (const unsigned long *)discovery;
    unsigned long *to = (unsigned long *)out;
    for (size_t i = 0; i < sizeof *out / sizeof(unsigned long); i++)
        to[i] = __atomic_load_n(&from[i], __ATOMIC_RELAXED);
    return 1;
}
