/* The discovery calls the loader (stub.c) answers without starting Python, counted there and read
 * by the core (core.c, shim/discovery.py) for the audit log.  The same text is C and a cffi cdef
 * (no macros): the index of a C_GetInterface call in `interface` is
 * name * SC4_DISCOVERY_VERSIONS + version, with the classes of shim/discovery.py
 * (name: any, "PKCS 11", other; version: any, 2.40, 3.x, other). */
struct sc4_discovery {
    unsigned long function_list;  /* C_GetFunctionList calls */
    unsigned long interface_list; /* C_GetInterfaceList calls */
    unsigned long interface[12];  /* C_GetInterface calls by (name, version) asked for */
    unsigned long flags;          /* C_GetInterface calls that asked for flags */
    unsigned long refused;        /* calls of the three answered with something other than CKR_OK */
};
