/* The embedded interpreter: started isolated from the host, kept usable
 * across the host's fork().
 *
 * Start.  The loader (shim/c/stub.c) calls sc4_start_python() before the
 * first call reaches Python; cffi then finds Py_IsInitialized() true and only
 * runs the module's init code (shim/_embedded_init.py).  The interpreter the
 * host gets is the one the module was built with and nothing else:
 *  - an isolated configuration: no PYTHON* variable is read (PYTHONPATH,
 *    PYTHONHOME, PYTHONMALLOC, PYTHONHASHSEED, PYTHONWARNINGS, PYTHONVERBOSE,
 *    PYTHONSTARTUP ...), no user site directory, no script directory;
 *  - home and executable fixed to the building interpreter's, so the prefix
 *    is never searched for along PATH;
 *  - no "site" import: no sitecustomize or usercustomize, no .pth file of a
 *    directory the build did not record; the recorded site directories
 *    (shim/_build.py site_dirs) are added here and their .pth files
 *    processed by the init code;
 *  - the host's locale untouched (configure_locale = 0) and Python's own
 *    text encoding UTF-8 whatever that locale is;
 *  - no signal handlers: signals belong to the host.
 * A failure comes back as a message, never as Py_FatalError's abort.
 *
 * Fork.  A host thread may fork while other threads are inside the shim, one
 * of them holding the GIL.  The child has only the forking thread; without
 * help the GIL stays held by a thread that no longer exists and the child's
 * first call waits forever.  When the interpreter is ours, the at-fork
 * handlers (sc4_fork_*, called by the loader's, which first wait for a start
 * in progress to finish) do what CPython's os.fork() does: take the GIL and
 * the import lock before fork (PyOS_BeforeFork), and in the child re-create
 * them and drop the other threads' states (PyOS_AfterFork_Child).  Taking the GIL cannot
 * deadlock the parent: a thread inside a backend call runs without the GIL
 * (cffi releases it around C calls) and waits for it only after the backend
 * returns, by which time the forking thread has given it back.  In a Python
 * host the interpreter is the host's, and its own os.fork() does this. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdio.h>
#include "core.h"
#include "sc4_build_paths.h"

/* Counts forks seen in this process image.  The Python side compares it to
 * its copy to notice that it now lives in a child.  A global read through
 * cffi, not a function call: cffi releases the GIL around every C call, and
 * this check runs on every PKCS#11 call. */
unsigned long sc4_fork_generation;

static int owned; /* this module started the interpreter */
static __thread PyGILState_STATE fork_gil;
static __thread int fork_holds_python;

static int failed(const char *step, PyStatus status, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s: %s%s%s", step, status.func ? status.func : "", status.func ? ": " : "",
             status.err_msg ? status.err_msg : "unknown error");
    return 0;
}

/* cffi imports _cffi_backend before the init code runs, so the recorded site
 * directories go on sys.path here; the init code then processes their .pth
 * files (site.addsitedir). */
static int add_site_dirs(char *err, size_t errlen)
{
    PyObject *path = PySys_GetObject("path"); /* borrowed */
    const char *dir;

    if (!path || !PyList_Check(path)) {
        snprintf(err, errlen, "sys.path is not a list");
        return 0;
    }
    for (int i = 0; (dir = sc4_site_dir(i)) != NULL; i++) {
        PyObject *entry = PyUnicode_DecodeFSDefault(dir);
        if (!entry || PyList_Append(path, entry) != 0) {
            Py_XDECREF(entry);
            PyErr_Clear();
            snprintf(err, errlen, "cannot add %s to sys.path", dir);
            return 0;
        }
        Py_DECREF(entry);
    }
    return 1;
}

int sc4_start_python(char *err, size_t errlen)
{
    PyPreConfig preconfig;
    PyConfig config;
    PyStatus status;
    int ok;

    if (Py_IsInitialized())
        return 1; /* a Python host: the shim runs in the host's interpreter */
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.configure_locale = 0;
    preconfig.coerce_c_locale = 0;
    preconfig.utf8_mode = 1;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        return failed("pre-initialisation", status, err, errlen);

    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.user_site_directory = 0;
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    status = PyConfig_SetBytesString(&config, &config.home, SC4_PYTHON_HOME);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.program_name, SC4_PYTHON_EXECUTABLE);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.executable, SC4_PYTHON_EXECUTABLE);
    if (PyStatus_Exception(status)) {
        PyConfig_Clear(&config);
        return failed("configuration", status, err, errlen);
    }
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        return failed("initialisation (home " SC4_PYTHON_HOME ")", status, err, errlen);
    __atomic_store_n(&owned, 1, __ATOMIC_RELEASE);
    ok = add_site_dirs(err, errlen);
    PyEval_SaveThread(); /* cffi takes the GIL per call, from any thread */
    return ok;
}

void sc4_fork_prepare(void)
{
    if (!__atomic_load_n(&owned, __ATOMIC_ACQUIRE))
        return;
    fork_gil = PyGILState_Ensure();
    PyOS_BeforeFork();
    fork_holds_python = 1;
}

void sc4_fork_parent(void)
{
    if (!fork_holds_python)
        return;
    fork_holds_python = 0;
    PyOS_AfterFork_Parent();
    PyGILState_Release(fork_gil);
}

void sc4_fork_child(void)
{
    if (!fork_holds_python)
        return;
    fork_holds_python = 0;
    PyOS_AfterFork_Child();
    PyGILState_Release(fork_gil);
}

static void count_fork(void)
{
    sc4_fork_generation++;
}

__attribute__((constructor)) static void sc4_interpreter_init(void)
{
    pthread_atfork(NULL, NULL, count_fork);
}
