/* A C host for the shim, like named: no Python of its own.
 *
 *   c_host MODULE MODE THREADS SIGNS
 *     MODE: local | deepbind | global   (dlopen flags the consumer uses)
 * Env: P11_PIN, P11_KEY_LABEL (an EC private key), P11_FORK=1 to also sign
 * in a forked child after its own C_Initialize.
 * Prints "ok <signatures>" and exits 0, or names the failing call. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cryptoki.h"
#include "function_list.h"

#define CKR_OK 0UL
#define CKF_OS_LOCKING_OK 2UL
#define CKF_SERIAL_SESSION 4UL
#define CKU_USER 1UL
#define CKA_CLASS 0UL
#define CKA_LABEL 3UL
#define CKO_PRIVATE_KEY 3UL
#define CKM_ECDSA 0x1041UL

static CK_FUNCTION_LIST *p11;
static CK_SLOT_ID slot;
static CK_SLOT_ID slots[16];
static CK_OBJECT_HANDLE key;
static int signs;

#define CHECK(call)                                                              \
    do {                                                                         \
        CK_RV rv_ = (call);                                                      \
        if (rv_ != CKR_OK) {                                                     \
            fprintf(stderr, "FAIL %s -> 0x%lx\n", #call, (unsigned long)rv_);     \
            exit(2);                                                             \
        }                                                                        \
    } while (0)

static void setup(void)
{
    CK_C_INITIALIZE_ARGS args = {0};
    CK_ULONG n = 16;
    CK_SESSION_HANDLE s;
    const char *pin = getenv("P11_PIN"), *label = getenv("P11_KEY_LABEL");
    CK_ULONG cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[2] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_ULONG found = 0;

    args.flags = CKF_OS_LOCKING_OK;
    CHECK(p11->C_Initialize(&args));
    CHECK(p11->C_GetSlotList(1, slots, &n));
    slot = slots[0];
    CHECK(p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
    CHECK(p11->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)));
    CHECK(p11->C_FindObjectsInit(s, tmpl, 2));
    CHECK(p11->C_FindObjects(s, &key, 1, &found));
    CHECK(p11->C_FindObjectsFinal(s));
    if (found != 1) {
        fprintf(stderr, "FAIL key %s not found\n", label);
        exit(2);
    }
}

static void *signer(void *unused)
{
    CK_SESSION_HANDLE s;
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    unsigned char hash[32], sig[128];
    (void)unused;
    memset(hash, 0x5a, sizeof hash);
    CHECK(p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
    for (int i = 0; i < signs; i++) {
        CK_ULONG len = sizeof sig;
        CHECK(p11->C_SignInit(s, &mech, key));
        CHECK(p11->C_Sign(s, hash, sizeof hash, sig, &len));
        if (len != 64) {
            fprintf(stderr, "FAIL signature length %lu\n", (unsigned long)len);
            exit(2);
        }
    }
    CHECK(p11->C_CloseSession(s));
    return NULL;
}

static void run_threads(int threads)
{
    pthread_t t[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, signer, NULL);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
}

int main(int argc, char **argv)
{
    int flags = RTLD_NOW;
    void *h;
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
    int threads;

    if (argc != 5) {
        fprintf(stderr, "usage: c_host MODULE local|deepbind|global THREADS SIGNS\n");
        return 64;
    }
    if (!strcmp(argv[2], "deepbind"))
        flags |= RTLD_LOCAL | RTLD_DEEPBIND;
    else if (!strcmp(argv[2], "global"))
        flags |= RTLD_GLOBAL;
    else
        flags |= RTLD_LOCAL;
    threads = atoi(argv[3]);
    signs = atoi(argv[4]);
    h = dlopen(argv[1], flags);
    if (!h) {
        fprintf(stderr, "FAIL dlopen %s\n", dlerror());
        return 2;
    }
    get = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(h, "C_GetFunctionList");
    CHECK(get(&p11));
    setup();
    run_threads(threads);
    if (getenv("P11_FORK")) {
        pid_t pid = fork();
        if (pid == 0) {
            /* PKCS#11: a child must initialise again before any other call;
             * handles from the parent are not valid any more. */
            setup();
            run_threads(1);
            CHECK(p11->C_Finalize(NULL));
            _exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "FAIL forked child status %d\n", status);
            return 2;
        }
        run_threads(1);
    }
    CHECK(p11->C_Finalize(NULL));
    printf("ok %d\n", threads * signs);
    return 0;
}
