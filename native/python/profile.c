/* usdtkit._native._profile: a profile function in C for Python 3.11, set on every thread at once.
 *
 * Python 3.11 has neither sys.monitoring nor threading.setprofile_all_threads (both 3.12), and
 * sys.setprofile() only changes the thread that calls it: a watcher thread that notices a tracer
 * could not turn profiling on for the main thread with it.  install() sets the profile function of
 * every thread of the interpreter through _PyEval_SetProfile() (what 3.12 does for all threads),
 * uninstall() clears it wherever it is ours; threads with another profiler (cProfile...) are left
 * alone.  Everything runs with the GIL held, so the list of threads cannot change meanwhile.
 *
 * The profile function does the cheap part here: it returns at once for calls of C functions and
 * for code out of scope, and calls Python only for calls into and returns from code in scope.
 * Its object is a 4-tuple, the ``hook``:
 *
 *     cache   dict: code object -> info, or None for code out of scope
 *     decide  decide(frame) -> info or None, for code not in cache yet (it stores the answer there)
 *     enter   enter(info): a call into code in scope (a generator or coroutine resuming is a call)
 *     leave   leave(info): a return from it (or a yield, or an exception leaving it)
 *
 * Python reports an exception raised by a profile function in the profiled program and removes the
 * function; an instrumented program must not change behaviour, so errors are reported as unraisable
 * and the program carries on.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define SUPPORTED 1

static int is_hook(PyObject *hook)
{
    if (!PyTuple_CheckExact(hook) || PyTuple_GET_SIZE(hook) != 4 || !PyDict_CheckExact(PyTuple_GET_ITEM(hook, 0))) {
        PyErr_SetString(PyExc_TypeError, "hook must be a tuple (cache: dict, decide, enter, leave)");
        return 0;
    }
    return 1;
}

static int profile(PyObject *hook, PyFrameObject *frame, int what, PyObject *arg)
{
    (void)arg;
    if (what != PyTrace_CALL && what != PyTrace_RETURN)
        return 0;
    PyCodeObject *code = PyFrame_GetCode(frame);
    PyObject *info = PyDict_GetItemWithError(PyTuple_GET_ITEM(hook, 0), (PyObject *)code);
    Py_DECREF(code);
    if (info != NULL) {
        Py_INCREF(info); /* another thread may replace the entry while Python code runs below */
    } else {
        if (PyErr_Occurred())
            goto failed;
        info = PyObject_CallOneArg(PyTuple_GET_ITEM(hook, 1), (PyObject *)frame);
        if (info == NULL)
            goto failed;
    }
    if (info != Py_None) {
        PyObject *done = PyObject_CallOneArg(PyTuple_GET_ITEM(hook, what == PyTrace_CALL ? 2 : 3), info);
        if (done == NULL) {
            Py_DECREF(info);
            goto failed;
        }
        Py_DECREF(done);
    }
    Py_DECREF(info);
    return 0;
failed:
    PyErr_WriteUnraisable(hook);
    return 0;
}

static PyObject *install(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *hook;
    int with_current = 1;
    if (!PyArg_ParseTuple(args, "O|p:install", &hook, &with_current) || !is_hook(hook))
        return NULL;
    PyThreadState *current = PyThreadState_Get();
    int installed = 0, foreign = 0;
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(current->interp); ts; ts = PyThreadState_Next(ts)) {
        if ((ts == current && !with_current) || (ts->c_profilefunc == profile && ts->c_profileobj == hook))
            continue;
        if (ts->c_profilefunc != NULL && ts->c_profilefunc != profile) {
            foreign++;
            continue;
        }
        if (_PyEval_SetProfile(ts, profile, hook) < 0)
            return NULL;
        installed++;
    }
    return Py_BuildValue("(ii)", installed, foreign);
}

static PyObject *install_current(PyObject *module, PyObject *hook)
{
    (void)module;
    if (!is_hook(hook) || _PyEval_SetProfile(PyThreadState_Get(), profile, hook) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *uninstall(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    PyThreadState *current = PyThreadState_Get();
    int removed = 0;
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(current->interp); ts; ts = PyThreadState_Next(ts)) {
        if (ts->c_profilefunc != profile)
            continue;
        if (_PyEval_SetProfile(ts, NULL, NULL) < 0)
            return NULL;
        removed++;
    }
    return PyLong_FromLong(removed);
}

static PyObject *installed(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    PyThreadState *current = PyThreadState_Get();
    int count = 0;
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(current->interp); ts; ts = PyThreadState_Next(ts))
        count += ts->c_profilefunc == profile;
    return PyLong_FromLong(count);
}

static PyMethodDef methods[] = {
    {"install", install, METH_VARARGS,
     "install(hook, with_current=True) -> (installed, foreign): set the profile function on every thread "
     "that has none; threads with another profile function are counted in foreign and left alone."},
    {"install_current", install_current, METH_O, "install_current(hook): set it on the calling thread."},
    {"uninstall", uninstall, METH_NOARGS, "uninstall() -> int: clear it on every thread that has it."},
    {"installed", installed, METH_NOARGS, "installed() -> int: how many threads have it."},
    {NULL, NULL, 0, NULL},
};
#else
#define SUPPORTED 0
static PyMethodDef methods[] = {{NULL, NULL, 0, NULL}};
#endif

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_profile", "A profile function in C, set on every thread (Python 3.11).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__profile(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddIntConstant(module, "SUPPORTED", SUPPORTED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
