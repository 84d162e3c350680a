/* What the core's hand-written C (the .c files here) and the generated cffi source
 * (shim/_build.py) say to each other.  The Python side sees the same
 * declarations through the cdef in shim/_build.py. */
#ifndef SC4_CORE_H
#define SC4_CORE_H

#include <stddef.h>
#include "cryptoki.h"
#include "sc4_function_list.h"
#include "discovery.h"

/* Generated: the core's function list, one sc4py_* callback per slot. */
extern CK_FUNCTION_LIST sc4_core_list;

/* core.c */
CK_RV sc4_core_get_function_list(CK_FUNCTION_LIST_PTR_PTR pp);
CK_FUNCTION_LIST *sc4_core_functions(void);
const char *sc4_core_path(void);
const char *sc4_site_dir(int i);
void sc4_core_set_discovery(const struct sc4_discovery *counts);
int sc4_discovery_read(struct sc4_discovery *out);

/* interpreter.c */
extern unsigned long sc4_fork_generation;
int sc4_start_python(char *err, size_t errlen);
void sc4_fork_prepare(void);
void sc4_fork_parent(void);
void sc4_fork_child(void);

/* audit_append.c; the flags are generated from shim/_build.py */
#include "sc4_append_flags.h"
long long sc4_audit_append(int fd, long long expected_size, const char *data, size_t len, int flags);

/* backend.c */
CK_RV sc4_load_backend(const char *path, CK_FUNCTION_LIST_PTR_PTR out, char *err, size_t errlen, int *deepbind);

#endif
