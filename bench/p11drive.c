/* bench/p11drive.c: a PKCS#11 consumer in C, so no Python start-up or GIL of the
 * measuring process is counted.  Compiled at bench time against shim/c/cryptoki.h
 * plus the CK_FUNCTION_LIST struct generated from shim/functions.py.
 *
 *   p11drive startup MODULE
 *       dlopen + C_GetFunctionList + C_Initialize + C_GetSlotList x2 -> {"startup_us":..}
 *   p11drive loop MODULE PIN OP THREADS N [SECONDS]
 *       OP = sign (C_SignInit + C_Sign, raw CKM_ECDSA over 32 bytes, the signature buffer
 *       given: what pkcs11-provider does) or sessioninfo (C_GetSessionInfo).
 *       or bind916: one signature as BIND 9.16's native PKCS#11 makes it, the call pattern
 *       of conformance/sequences/bind916-signzone-ecdsa.jsonl (20 calls: SHA-256 by
 *       C_DigestInit + 5 C_DigestUpdate + C_DigestFinal, C_SignInit + C_Sign, the same
 *       digest again, then a session public key from the token's: C_CreateObject,
 *       C_VerifyInit + C_Verify, C_DestroyObject).
 *       Each thread opens its own session; runs N operations per thread (or at least
 *       SECONDS) -> {"ops":..,"seconds":..,"ops_per_s":..,"us_per_op_thread":..}
 * Module loaded RTLD_NOW|RTLD_LOCAL like PKCS#11 consumers do. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CKR_OK 0UL
#define CKR_USER_ALREADY_LOGGED_IN 0x100UL
#define CKF_SERIAL_SESSION 4UL
#define CKF_RW_SESSION 2UL
#define CKF_OS_LOCKING_OK 2UL
#define CKU_USER 1UL
#define CKA_CLASS 0UL
#define CKA_KEY_TYPE 0x100UL
#define CKA_TOKEN 1UL
#define CKA_PRIVATE 2UL
#define CKA_VERIFY 0x10AUL
#define CKA_EC_PARAMS 0x180UL
#define CKA_EC_POINT 0x181UL
#define CKO_PUBLIC_KEY 2UL
#define CKO_PRIVATE_KEY 3UL
#define CKM_SHA256 0x250UL
#define CKK_EC 3UL
#define CKM_ECDSA 0x1041UL

static CK_FUNCTION_LIST *f;
static const char *pin, *op;
static long per_thread;
static double min_seconds;
static CK_SLOT_ID slot;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, CK_RV rv)
{
    fprintf(stderr, "p11drive: %s failed: 0x%lx\n", what, (unsigned long)rv);
    exit(1);
}

static void load(const char *module)
{
    void *h = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "p11drive: %s\n", dlerror());
        exit(1);
    }
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR) = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(h, "C_GetFunctionList");
    if (!get)
        die("dlsym C_GetFunctionList", 0);
    CK_RV rv = get(&f);
    if (rv != CKR_OK)
        die("C_GetFunctionList", rv);
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    if ((rv = f->C_Initialize(&args)) != CKR_OK)
        die("C_Initialize", rv);
    CK_ULONG n = 0;
    if ((rv = f->C_GetSlotList(1, NULL, &n)) != CKR_OK || n == 0)
        die("C_GetSlotList (count)", rv);
    CK_SLOT_ID *slots = calloc(n, sizeof *slots);
    if ((rv = f->C_GetSlotList(1, slots, &n)) != CKR_OK)
        die("C_GetSlotList", rv);
    slot = slots[0];
    free(slots);
}

struct result {
    long ops;
    double seconds;
};

/* The token's EC public key (params and point), for bind916's session copy of it. */
struct pubkey {
    unsigned char params[64], point[160];
    CK_ULONG params_len, point_len;
};

static void read_pubkey(CK_SESSION_HANDLE s, struct pubkey *pk)
{
    CK_ULONG cls = CKO_PUBLIC_KEY, kt = CKK_EC, found = 0;
    CK_ATTRIBUTE tmpl[2] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt}};
    CK_OBJECT_HANDLE h;
    CK_RV rv;
    if ((rv = f->C_FindObjectsInit(s, tmpl, 2)) != CKR_OK)
        die("C_FindObjectsInit (public key)", rv);
    if ((rv = f->C_FindObjects(s, &h, 1, &found)) != CKR_OK || found != 1)
        die("C_FindObjects (an EC public key)", rv);
    f->C_FindObjectsFinal(s);
    CK_ATTRIBUTE get[2] = {{CKA_EC_PARAMS, pk->params, sizeof pk->params},
                           {CKA_EC_POINT, pk->point, sizeof pk->point}};
    if ((rv = f->C_GetAttributeValue(s, h, get, 2)) != CKR_OK)
        die("C_GetAttributeValue (EC public key)", rv);
    pk->params_len = get[0].ulValueLen;
    pk->point_len = get[1].ulValueLen;
}

/* SHA-256 of a record set as BIND 9.16 feeds it: five updates of the RRset's pieces. */
static void digest_rrset(CK_SESSION_HANDLE s, unsigned char *out)
{
    static const CK_ULONG pieces[5] = {12, 40, 7, 96, 33};
    unsigned char data[96];
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_ULONG len = 32;
    CK_RV rv;
    memset(data, 0x5a, sizeof data);
    if ((rv = f->C_DigestInit(s, &sha)) != CKR_OK)
        die("C_DigestInit", rv);
    for (int i = 0; i < 5; i++)
        if ((rv = f->C_DigestUpdate(s, data, pieces[i])) != CKR_OK)
            die("C_DigestUpdate", rv);
    if ((rv = f->C_DigestFinal(s, out, &len)) != CKR_OK || len != 32)
        die("C_DigestFinal", rv);
}

static void bind916_signature(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const struct pubkey *pk)
{
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    unsigned char digest[32], sig[256];
    CK_ULONG len = sizeof sig, cls = CKO_PUBLIC_KEY, kt = CKK_EC;
    CK_BBOOL no = 0, yes = 1;
    CK_OBJECT_HANDLE pub;
    CK_RV rv;
    digest_rrset(s, digest);
    if ((rv = f->C_SignInit(s, &mech, key)) != CKR_OK)
        die("C_SignInit", rv);
    if ((rv = f->C_Sign(s, digest, sizeof digest, sig, &len)) != CKR_OK)
        die("C_Sign", rv);
    digest_rrset(s, digest);
    CK_ATTRIBUTE tmpl[7] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt},
                            {CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &no, 1}, {CKA_VERIFY, &yes, 1},
                            {CKA_EC_PARAMS, (void *)pk->params, pk->params_len},
                            {CKA_EC_POINT, (void *)pk->point, pk->point_len}};
    if ((rv = f->C_CreateObject(s, tmpl, 7, &pub)) != CKR_OK)
        die("C_CreateObject", rv);
    if ((rv = f->C_VerifyInit(s, &mech, pub)) != CKR_OK)
        die("C_VerifyInit", rv);
    if ((rv = f->C_Verify(s, digest, sizeof digest, sig, len)) != CKR_OK)
        die("C_Verify", rv);
    if ((rv = f->C_DestroyObject(s, pub)) != CKR_OK)
        die("C_DestroyObject", rv);
}

static void *worker(void *arg)
{
    struct result *res = arg;
    CK_SESSION_HANDLE s;
    CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
        die("C_OpenSession", rv);
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        die("C_Login", rv);
    CK_ULONG cls = CKO_PRIVATE_KEY;
    CK_ULONG kt = CKK_EC;
    CK_ATTRIBUTE tmpl[2] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt}};
    CK_OBJECT_HANDLE key;
    CK_ULONG found = 0;
    if ((rv = f->C_FindObjectsInit(s, tmpl, 2)) != CKR_OK)
        die("C_FindObjectsInit", rv);
    if ((rv = f->C_FindObjects(s, &key, 1, &found)) != CKR_OK || found != 1)
        die("C_FindObjects (an EC private key)", rv);
    f->C_FindObjectsFinal(s);
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    unsigned char digest[32], sig[256];
    CK_SESSION_INFO info;
    for (int i = 0; i < 32; i++)
        digest[i] = (unsigned char)i;
    int sign = strcmp(op, "sign") == 0, bind916 = strcmp(op, "bind916") == 0;
    struct pubkey pk;
    if (bind916)
        read_pubkey(s, &pk);
    long done = 0;
    double t0 = now();
    while (done < per_thread || (min_seconds > 0 && now() - t0 < min_seconds)) {
        if (bind916) {
            bind916_signature(s, key, &pk);
        } else if (sign) {
            CK_ULONG len = sizeof sig;
            if ((rv = f->C_SignInit(s, &mech, key)) != CKR_OK)
                die("C_SignInit", rv);
            if ((rv = f->C_Sign(s, digest, sizeof digest, sig, &len)) != CKR_OK)
                die("C_Sign", rv);
        } else if ((rv = f->C_GetSessionInfo(s, &info)) != CKR_OK) {
            die("C_GetSessionInfo", rv);
        }
        done++;
    }
    res->seconds = now() - t0;
    res->ops = done;
    f->C_CloseSession(s);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "startup") == 0) {
        double t0 = now();
        load(argv[2]);
        printf("{\"startup_us\": %.1f}\n", (now() - t0) * 1e6);
        fflush(stdout);
        _exit(0); /* no C_Finalize, like BIND: exit as fast as the module allows */
    }
    if (argc < 7 || strcmp(argv[1], "loop") != 0) {
        fprintf(stderr, "usage: p11drive startup MODULE | loop MODULE PIN sign|sessioninfo|bind916 THREADS N [SECONDS]\n");
        return 2;
    }
    load(argv[2]);
    pin = argv[3];
    op = argv[4];
    int threads = atoi(argv[5]);
    per_thread = atol(argv[6]);
    min_seconds = argc > 7 ? atof(argv[7]) : 0;
    pthread_t tid[64];
    struct result res[64];
    if (threads < 1 || threads > 64)
        return 2;
    double t0 = now();
    for (int i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, worker, &res[i]);
    long ops = 0;
    double thread_s = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        ops += res[i].ops;
        thread_s += res[i].seconds;
    }
    double wall = now() - t0;
    printf("{\"ops\": %ld, \"seconds\": %.6f, \"ops_per_s\": %.2f, \"us_per_op_thread\": %.2f}\n", ops, wall,
           ops / wall, thread_s / ops * 1e6);
    fflush(stdout);
    f->C_Finalize(NULL);
    return 0;
}
