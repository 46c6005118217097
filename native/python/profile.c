/* usdtkit._native._profile: usdtkit.instrument's hooks on Python 3.11, in C.
 *
 * Python 3.11 has neither sys.monitoring nor threading.setprofile_all_threads (both 3.12), and
 * sys.setprofile() only changes the thread that calls it: a watcher thread that notices a tracer
 * could not turn profiling on for the main thread with it.  install() sets the profile function of
 * every thread of the interpreter through _PyEval_SetProfile() (what 3.12 does for all threads),
 * uninstall() clears it wherever it is ours; threads with another profiler (cProfile...) are left
 * alone.  Everything runs with the GIL held, so the list of threads cannot change meanwhile.
 *
 * The profile function is a Hook, made for one period of tracing:
 *
 *     Hook(cache, decide, entry, ret)
 *     cache   dict: code object -> info (function: bytes, file: bytes, line: int), or None when the
 *             code is out of scope
 *     decide  decide(frame) -> info or None, for code not in cache yet (it stores the answer there)
 *     entry, ret   the probes pycalls:function__entry and pycalls:function__return
 *
 * It returns at once for C functions and for code out of scope, and does what
 * usdtkit/instrument/calls.py does in Python on 3.12+ for code in scope, with the same rules: a
 * stack per thread (kept in the thread's state dict under the hook, so each period starts with
 * fresh stacks and uninstall() frees them), the entry probe fired at the stack's depth, total and
 * self time from CLOCK_MONOTONIC (time.perf_counter_ns's clock) taken outside the probes' own
 * firing, returns with no entry on the stack ignored.  A generator or coroutine resuming is a
 * "call" event and its yield a "return", as cProfile counts them.
 *
 * Python reports an exception raised by a profile function in the profiled program and removes the
 * function; an instrumented program must not change behaviour, so errors are reported as unraisable
 * and the program carries on.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <time.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define SUPPORTED 1

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- one thread's stack of instrumented frames */

typedef struct {
    PyObject *info; /* strong reference */
    long long start;
    long long callees; /* total time of the instrumented calls this frame made */
} Frame;

typedef struct {
    PyObject_HEAD
    Frame *frames;
    Py_ssize_t size, capacity;
} Stack;

static void stack_dealloc(Stack *stack)
{
    for (Py_ssize_t i = 0; i < stack->size; i++)
        Py_DECREF(stack->frames[i].info);
    PyMem_Free(stack->frames);
    Py_TYPE(stack)->tp_free((PyObject *)stack);
}

static PyTypeObject StackType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "usdtkit._native._profile.Stack",
    .tp_basicsize = sizeof(Stack),
    .tp_dealloc = (destructor)stack_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One thread's instrumented frames.",
};

static int stack_push(Stack *stack, PyObject *info, long long start)
{
    if (stack->size == stack->capacity) {
        Py_ssize_t capacity = stack->capacity ? stack->capacity * 2 : 32;
        Frame *frames = PyMem_Realloc(stack->frames, (size_t)capacity * sizeof(Frame));
        if (frames == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        stack->frames = frames;
        stack->capacity = capacity;
    }
    Py_INCREF(info);
    stack->frames[stack->size++] = (Frame){info, start, 0};
    return 0;
}

/* ---- the hook */

typedef struct {
    PyObject_HEAD
    PyObject *cache, *decide, *entry, *ret, *entry_fire, *ret_fire;
} Hook;

static PyObject *str_enabled, *str_fire;

static void hook_dealloc(Hook *hook)
{
    Py_XDECREF(hook->cache);
    Py_XDECREF(hook->decide);
    Py_XDECREF(hook->entry);
    Py_XDECREF(hook->ret);
    Py_XDECREF(hook->entry_fire);
    Py_XDECREF(hook->ret_fire);
    Py_TYPE(hook)->tp_free((PyObject *)hook);
}

static int hook_init(Hook *hook, PyObject *args, PyObject *kwargs)
{
    PyObject *cache, *decide, *entry, *ret;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "Hook(cache, decide, entry, ret) takes no keywords");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!OOO:Hook", &PyDict_Type, &cache, &decide, &entry, &ret))
        return -1;
    PyObject *entry_fire = PyObject_GetAttr(entry, str_fire);
    PyObject *ret_fire = entry_fire ? PyObject_GetAttr(ret, str_fire) : NULL;
    if (ret_fire == NULL) {
        Py_XDECREF(entry_fire);
        return -1;
    }
    Py_INCREF(cache);
    Py_INCREF(decide);
    Py_INCREF(entry);
    Py_INCREF(ret);
    Py_XSETREF(hook->cache, cache);
    Py_XSETREF(hook->decide, decide);
    Py_XSETREF(hook->entry, entry);
    Py_XSETREF(hook->ret, ret);
    Py_XSETREF(hook->entry_fire, entry_fire);
    Py_XSETREF(hook->ret_fire, ret_fire);
    return 0;
}

/* The info for the frame's code: a new reference (None: out of scope), NULL on error. */
static PyObject *info_of(Hook *hook, PyFrameObject *frame)
{
    PyCodeObject *code = PyFrame_GetCode(frame);
    PyObject *info = PyDict_GetItemWithError(hook->cache, (PyObject *)code);
    Py_DECREF(code);
    if (info != NULL) {
        Py_INCREF(info);
        return info;
    }
    if (PyErr_Occurred())
        return NULL;
    info = PyObject_CallOneArg(hook->decide, (PyObject *)frame);
    if (info != NULL && info != Py_None && !(PyTuple_CheckExact(info) && PyTuple_GET_SIZE(info) == 3)) {
        PyErr_SetString(PyExc_TypeError, "decide() must return (function, file, line) or None");
        Py_CLEAR(info);
    }
    return info;
}

/* This thread's stack for the hook (a new reference); NULL without an error if it has none and
 * `create` is 0. */
static Stack *stack_of(Hook *hook, int create)
{
    PyObject *dict = PyThreadState_GetDict();
    if (dict == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "no thread state dict");
        return NULL;
    }
    Stack *stack = (Stack *)PyDict_GetItemWithError(dict, (PyObject *)hook);
    if (stack != NULL) {
        Py_INCREF(stack);
        return stack;
    }
    if (PyErr_Occurred() || !create)
        return NULL;
    stack = PyObject_New(Stack, &StackType);
    if (stack == NULL)
        return NULL;
    stack->frames = NULL;
    stack->size = stack->capacity = 0;
    if (PyDict_SetItem(dict, (PyObject *)hook, (PyObject *)stack) < 0) {
        Py_DECREF(stack);
        return NULL;
    }
    return stack;
}

/* 1 if the probe's semaphore says it is traced, 0 if not, -1 on error. */
static int traced(PyObject *probe)
{
    PyObject *semaphore = PyObject_GetAttr(probe, str_enabled);
    if (semaphore == NULL)
        return -1;
    int on = PyObject_IsTrue(semaphore);
    Py_DECREF(semaphore);
    return on;
}

static int fire(PyObject *fire_function, PyObject *info, long long *numbers, int count)
{
    PyObject *args[6] = {PyTuple_GET_ITEM(info, 0), PyTuple_GET_ITEM(info, 1), PyTuple_GET_ITEM(info, 2)};
    int made = 0, rc = -1;
    for (; made < count; made++)
        if ((args[3 + made] = PyLong_FromLongLong(numbers[made])) == NULL)
            goto done;
    PyObject *result = PyObject_Vectorcall(fire_function, args, (size_t)(3 + count), NULL);
    if (result != NULL) {
        Py_DECREF(result);
        rc = 0;
    }
done:
    for (int i = 0; i < made; i++)
        Py_DECREF(args[3 + i]);
    return rc;
}

static int enter(Hook *hook, PyObject *info)
{
    Stack *stack = stack_of(hook, 1);
    if (stack == NULL)
        return -1;
    long long depth = stack->size;
    int rc = traced(hook->entry);
    if (rc > 0)
        rc = fire(hook->entry_fire, info, &depth, 1);
    if (rc == 0)
        rc = stack_push(stack, info, now_ns());
    Py_DECREF(stack);
    return rc;
}

static int leave(Hook *hook, PyObject *info, long long now)
{
    Stack *stack = stack_of(hook, 0);
    if (stack == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t index = stack->size - 1;
    while (index >= 0 && stack->frames[index].info != info)
        index--;
    if (index < 0) { /* its entry was not seen: it began before the hooks were on */
        Py_DECREF(stack);
        return 0;
    }
    /* The frames above it never returned to us (their thread switched stacks under us). */
    for (Py_ssize_t above = stack->size - 1; above > index; above--)
        Py_DECREF(stack->frames[above].info);
    Frame frame = stack->frames[index];
    stack->size = index;
    long long numbers[3] = {index, now - frame.start, 0};
    numbers[2] = numbers[1] - frame.callees;
    if (index > 0)
        stack->frames[index - 1].callees += numbers[1];
    int rc = traced(hook->ret);
    if (rc > 0)
        rc = fire(hook->ret_fire, info, numbers, 3);
    Py_DECREF(frame.info);
    Py_DECREF(stack);
    return rc < 0 ? -1 : 0;
}

static int event(Hook *hook, PyFrameObject *frame, int call)
{
    long long now = call ? 0 : now_ns();
    PyObject *info = info_of(hook, frame);
    if (info == NULL)
        return -1;
    int rc = info == Py_None ? 0 : call ? enter(hook, info) : leave(hook, info, now);
    Py_DECREF(info);
    return rc;
}

static int profile(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg)
{
    (void)arg;
    if (what != PyTrace_CALL && what != PyTrace_RETURN)
        return 0;
    Py_INCREF(obj); /* another thread may uninstall it while the probe's Python code runs */
    if (event((Hook *)obj, frame, what == PyTrace_CALL) < 0)
        PyErr_WriteUnraisable(obj);
    Py_DECREF(obj);
    return 0;
}

static PyObject *hook_call_event(Hook *hook, PyObject *frame)
{
    if (!PyFrame_Check(frame)) {
        PyErr_SetString(PyExc_TypeError, "call_event(frame)");
        return NULL;
    }
    if (event(hook, (PyFrameObject *)frame, 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef hook_methods[] = {
    {"call_event", (PyCFunction)hook_call_event, METH_O,
     "call_event(frame): what the hook does for a call into frame (for a thread whose first event "
     "went to another profile function)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "usdtkit._native._profile.Hook",
    .tp_basicsize = sizeof(Hook),
    .tp_dealloc = (destructor)hook_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Hook(cache, decide, entry, ret): the profile function of one period of tracing.",
    .tp_methods = hook_methods,
    .tp_init = (initproc)hook_init,
    .tp_new = PyType_GenericNew,
};

/* ---- setting it on threads */

static PyObject *install(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *hook;
    int with_current = 1;
    if (!PyArg_ParseTuple(args, "O!|p:install", &HookType, &hook, &with_current))
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
    if (!PyObject_TypeCheck(hook, &HookType)) {
        PyErr_SetString(PyExc_TypeError, "install_current(hook: Hook)");
        return NULL;
    }
    if (_PyEval_SetProfile(PyThreadState_Get(), profile, hook) < 0)
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
        PyObject *hook = ts->c_profileobj;
        Py_INCREF(hook);
        int failed = _PyEval_SetProfile(ts, NULL, NULL) < 0;
        /* The thread's stack goes with the hook. */
        if (!failed && ts->dict != NULL && PyDict_DelItem(ts->dict, hook) < 0) {
            if (PyErr_ExceptionMatches(PyExc_KeyError))
                PyErr_Clear();
            else
                failed = 1;
        }
        Py_DECREF(hook);
        if (failed)
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
     "install(hook, with_current=True) -> (installed, foreign): set the hook on every thread that has no "
     "profile function; threads with another one are counted in foreign and left alone."},
    {"install_current", install_current, METH_O, "install_current(hook): set it on the calling thread."},
    {"uninstall", uninstall, METH_NOARGS, "uninstall() -> int: clear it, and its stacks, on every thread."},
    {"installed", installed, METH_NOARGS, "installed() -> int: how many threads have it."},
    {NULL, NULL, 0, NULL},
};
#else
#define SUPPORTED 0
static PyMethodDef methods[] = {{NULL, NULL, 0, NULL}};
#endif

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_profile", "usdtkit.instrument's hooks on Python 3.11, in C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__profile(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "SUPPORTED", SUPPORTED) < 0)
        goto failed;
#if SUPPORTED
    str_enabled = PyUnicode_InternFromString("enabled");
    str_fire = PyUnicode_InternFromString("fire");
    if (str_enabled == NULL || str_fire == NULL || PyType_Ready(&StackType) < 0 || PyType_Ready(&HookType) < 0)
        goto failed;
    Py_INCREF(&HookType);
    if (PyModule_AddObject(module, "Hook", (PyObject *)&HookType) < 0) {
        Py_DECREF(&HookType);
        goto failed;
    }
#endif
    return module;
failed:
    Py_DECREF(module);
    return NULL;
}
