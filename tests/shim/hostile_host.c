/* A C host that checks what loading the shim does to the process around it.
 *
 *   hostile_host MODULE start
 *     C_GetFunctionList, C_Initialize, C_GetInfo, C_GetSlotList, C_Finalize;
 *     prints "init=0x.. info=0x.. slots=0x.. final=0x.." and the LC_CTYPE
 *     locale before and after ("locale_before=C locale_after=C").  The host
 *     never calls setlocale(LC_ALL, ""), like a daemon that keeps "C".
 *   hostile_host MODULE fork FORKS
 *     two threads call into the shim in a loop while the main thread forks
 *     FORKS times; every child runs C_Initialize, C_GetSlotList, C_GetInfo
 *     and C_Finalize and exits 0 if all returned CKR_OK.  A child that makes
 *     no progress for CHILD_TIMEOUT seconds is killed by SIGALRM and counted
 *     as hung, and the host stops forking at the first hung child.
 *     Prints "forks=N ok=N hung=0 failed=0" (forks = children started).
 *   hostile_host MODULE discover LIBPYTHON_SONAME
 *     C_GetFunctionList, C_GetInterfaceList, C_GetInterface only; prints
 *     "slots=68 null=0 interfaces=1 python_loaded=0": how many function-list
 *     slots there are, how many are NULL, and whether libpython is loaded.
 *   hostile_host MODULE rediscover
 *     after main's C_GetFunctionList: 2 more C_GetFunctionList, 1 C_GetInterfaceList,
 *     C_GetInterface for (NULL, NULL), 2 x ("PKCS 11", 2.40), ("PKCS 11", 3.0) (refused) and
 *     ("PKCS 11", NULL, CKF_INTERFACE_FORK_SAFE) (refused), then C_Initialize, one more
 *     C_GetFunctionList, C_Finalize; prints "init=0x.. final=0x.. refused=2".
 * Exit status 0 when the host ran to the end (whatever the CKRs were). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <locale.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cryptoki.h"
#include "function_list.h"

#define CKR_OK 0UL
#define CKF_OS_LOCKING_OK 2UL
#define CHILD_TIMEOUT 30

static CK_FUNCTION_LIST *p11;
static volatile int stop;

static CK_RV initialize(void)
{
    CK_C_INITIALIZE_ARGS args = {0};
    args.flags = CKF_OS_LOCKING_OK;
    return p11->C_Initialize(&args);
}

static int start(void)
{
    char before[128], after[128];
    CK_INFO info;
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_RV init, got_info, got_slots, final;

    snprintf(before, sizeof before, "%s", setlocale(LC_CTYPE, NULL));
    init = initialize();
    got_info = p11->C_GetInfo(&info);
    got_slots = p11->C_GetSlotList(0, slots, &n);
    final = p11->C_Finalize(NULL);
    snprintf(after, sizeof after, "%s", setlocale(LC_CTYPE, NULL));
    printf("init=0x%lx info=0x%lx slots=0x%lx final=0x%lx\n", init, got_info, got_slots, final);
    printf("locale_before=%s locale_after=%s\n", before, after);
    return 0;
}

static void *busy(void *unused)
{
    CK_SLOT_ID slots[16];
    CK_INFO info;
    (void)unused;
    while (!stop) {
        CK_ULONG n = 16;
        p11->C_GetSlotList(0, slots, &n);
        p11->C_GetInfo(&info);
    }
    return NULL;
}

static int child(void)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_INFO info;
    alarm(CHILD_TIMEOUT);
    if (initialize() != CKR_OK || p11->C_GetSlotList(0, slots, &n) != CKR_OK || p11->C_GetInfo(&info) != CKR_OK
        || p11->C_Finalize(NULL) != CKR_OK)
        return 3;
    return 0;
}

static int forks(int count)
{
    pthread_t t[2];
    int ok = 0, hung = 0, failed = 0;
    CK_RV rv = initialize();

    if (rv != CKR_OK) {
        fprintf(stderr, "FAIL C_Initialize -> 0x%lx\n", rv);
        return 2;
    }
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, busy, NULL);
    for (int i = 0; i < count; i++) {
        int status;
        pid_t pid = fork();
        if (pid == 0)
            _exit(child());
        if (pid < 0 || waitpid(pid, &status, 0) != pid) {
            perror("fork/waitpid");
            return 2;
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            ok++;
        else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
            hung++;
            count = i + 1;
        } else
            failed++;
        usleep(2000);
    }
    stop = 1;
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    p11->C_Finalize(NULL);
    printf("forks=%d ok=%d hung=%d failed=%d\n", count, ok, hung, failed);
    return 0;
}

static int discover(void *h, const char *libpython)
{
    CK_RV (*list)(CK_INTERFACE_PTR, CK_ULONG_PTR) = (CK_RV (*)(CK_INTERFACE_PTR, CK_ULONG_PTR))dlsym(h, "C_GetInterfaceList");
    CK_RV (*one)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) =
        (CK_RV (*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS))dlsym(h, "C_GetInterface");
    CK_INTERFACE ifaces[4];
    CK_INTERFACE_PTR iface = NULL;
    CK_ULONG count = 4;
    size_t first = offsetof(CK_FUNCTION_LIST, C_Initialize);
    size_t slots = (sizeof(CK_FUNCTION_LIST) - first) / sizeof(void *);
    void *const *slot = (void *const *)((const char *)p11 + first);
    int null = 0;

    for (size_t i = 0; i < slots; i++)
        null += slot[i] == NULL;
    if (!list || !one || list(ifaces, &count) != CKR_OK || one(NULL, NULL, &iface, 0) != CKR_OK || !iface) {
        fprintf(stderr, "FAIL C_GetInterfaceList / C_GetInterface\n");
        return 2;
    }
    printf("slots=%zu null=%d interfaces=%lu python_loaded=%d\n", slots, null, count,
           dlopen(libpython, RTLD_NOW | RTLD_NOLOAD) != NULL);
    return 0;
}

static int rediscover(void *h)
{
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR) = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(h, "C_GetFunctionList");
    CK_RV (*list)(CK_INTERFACE_PTR, CK_ULONG_PTR) = (CK_RV (*)(CK_INTERFACE_PTR, CK_ULONG_PTR))dlsym(h, "C_GetInterfaceList");
    CK_RV (*one)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) =
        (CK_RV (*)(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS))dlsym(h, "C_GetInterface");
    CK_FUNCTION_LIST *again;
    CK_INTERFACE ifaces[4];
    CK_INTERFACE_PTR iface;
    CK_ULONG count = 4;
    CK_VERSION v240 = {2, 40}, v30 = {3, 0};
    CK_UTF8CHAR name[] = "PKCS 11";
    CK_RV init, final;
    int refused = 0;

    if (!list || !one || get(&again) != CKR_OK || get(&again) != CKR_OK || list(ifaces, &count) != CKR_OK
        || one(NULL, NULL, &iface, 0) != CKR_OK || one(name, &v240, &iface, 0) != CKR_OK
        || one(name, &v240, &iface, 0) != CKR_OK) {
        fprintf(stderr, "FAIL discovery before C_Initialize\n");
        return 2;
    }
    refused += one(name, &v30, &iface, 0) != CKR_OK;
    refused += one(name, NULL, &iface, 1 /* CKF_INTERFACE_FORK_SAFE */) != CKR_OK;
    init = initialize();
    if (get(&again) != CKR_OK) {
        fprintf(stderr, "FAIL C_GetFunctionList after C_Initialize\n");
        return 2;
    }
    final = p11->C_Finalize(NULL);
    printf("init=0x%lx final=0x%lx refused=%d\n", init, final, refused);
    return 0;
}

int main(int argc, char **argv)
{
    void *h;
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
    CK_RV rv;

    if (argc < 3) {
        fprintf(stderr, "usage: hostile_host MODULE start | MODULE fork FORKS | MODULE discover LIBPYTHON | MODULE rediscover\n");
        return 64;
    }
    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "FAIL dlopen %s\n", dlerror());
        return 2;
    }
    get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(h, "C_GetFunctionList");
    if (!get || (rv = get(&p11)) != CKR_OK) {
        fprintf(stderr, "FAIL C_GetFunctionList\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(argv[2], "start"))
        return start();
    if (!strcmp(argv[2], "fork") && argc == 4)
        return forks(atoi(argv[3]));
    if (!strcmp(argv[2], "discover") && argc == 4)
        return discover(h, argv[3]);
    if (!strcmp(argv[2], "rediscover"))
        return rediscover(h);
    fprintf(stderr, "usage: hostile_host MODULE start | MODULE fork FORKS | MODULE discover LIBPYTHON | MODULE rediscover\n");
    return 64;
}
