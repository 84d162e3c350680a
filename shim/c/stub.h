/* Between the loader (stub.c) and its generated entry points (sc4_stub_entries.c).
 * Hidden: the module exports the C_* functions and nothing else of its own. */
#ifndef SC4_STUB_H
#define SC4_STUB_H

#include "cryptoki.h"
#include "sc4_function_list.h"

/* The core's function list, loading and starting the core on first use; NULL
 * if it could not start (the reason went to stderr and syslog). */
__attribute__((visibility("hidden"))) CK_FUNCTION_LIST *sc4_stub_core(void);

/* Hand-written in stub.c: answered without starting Python. */
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);

/* The list C_GetFunctionList hands out: every slot one of the exported C_*. */
__attribute__((visibility("hidden"))) extern CK_FUNCTION_LIST sc4_stub_list;

#endif
