/* usdtkit._native._fastfire: fire a runtime USDT probe from Python in one C call.
 *
 * fire(address, kinds, *args) -> bool
 *
 * `address` is the probe's function in the provider's generated object (a 5-byte NOP site then ret),
 * `kinds` one byte per argument: 'b' 'B' 'h' 'H' 'i' 'I' 'q' 'Q' (int8 .. uint64), '?' (bool) or
 * 's' (str/bytes/None as a NUL-terminated string pointer).  The arguments are checked and converted
 * here and the site is called with them in the six SysV argument registers, with the GIL held (the
 * site is a NOP, or a uprobe the kernel handles synchronously).
 *
 * It returns False, without raising and without calling anything, whenever an argument is not the
 * plain exact type and range the fast path handles (an int subclass, a bool given as 0/1, a string
 * with a NUL or longer than MAX_STRING_BYTES, a value out of range...) or when `address` is 0 (the
 * provider was unloaded): the caller then takes the Python path, which converts or raises the
 * documented error.  So this module changes the cost of firing, never its behaviour.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_ARGS 6
#define MAX_STRING_BYTES 4096

typedef void (*site_fn)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

static int as_integer(PyObject *obj, char kind, uint64_t *out)
{
    if (!PyLong_CheckExact(obj))
        return 0;
    if (kind == 'Q') {
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *out = (uint64_t)u;
        return 1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    long long low, high;
    switch (kind) {
    case 'b': low = INT8_MIN; high = INT8_MAX; break;
    case 'B': low = 0; high = UINT8_MAX; break;
    case 'h': low = INT16_MIN; high = INT16_MAX; break;
    case 'H': low = 0; high = UINT16_MAX; break;
    case 'i': low = INT32_MIN; high = INT32_MAX; break;
    case 'I': low = 0; high = UINT32_MAX; break;
    case 'q': low = INT64_MIN; high = INT64_MAX; break;
    default: return 0;
    }
    if (v < low || v > high)
        return 0;
    *out = (uint64_t)v;
    return 1;
}

static int as_string(PyObject *obj, uint64_t *out)
{
    const char *data;
    Py_ssize_t size;
    if (obj == Py_None) {
        *out = 0;
        return 1;
    }
    if (PyUnicode_CheckExact(obj)) {
        data = PyUnicode_AsUTF8AndSize(obj, &size); /* cached in the str object: no copy after the first */
        if (data == NULL) {
            PyErr_Clear(); /* lone surrogates: the Python path reports them */
            return 0;
        }
    } else if (PyBytes_CheckExact(obj)) {
        data = PyBytes_AS_STRING(obj);
        size = PyBytes_GET_SIZE(obj);
    } else {
        return 0;
    }
    if (size > MAX_STRING_BYTES || memchr(data, 0, (size_t)size) != NULL)
        return 0;
    *out = (uint64_t)(uintptr_t)data; /* valid while the caller holds the argument (the whole call) */
    return 1;
}

static PyObject *fire(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 2 || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "fire(address, kinds: bytes, *args)");
        return NULL;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(args[0]);
    if (address == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    const char *kinds = PyBytes_AS_STRING(args[1]);
    Py_ssize_t count = PyBytes_GET_SIZE(args[1]);
    if (address == 0 || count > MAX_ARGS || nargs - 2 != count)
        Py_RETURN_FALSE;
    uint64_t v[MAX_ARGS] = {0, 0, 0, 0, 0, 0};
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *obj = args[2 + i];
        char kind = kinds[i];
        int ok;
        if (kind == 's')
            ok = as_string(obj, &v[i]);
        else if (kind == '?') {
            ok = obj == Py_True || obj == Py_False;
            v[i] = obj == Py_True;
        } else
            ok = as_integer(obj, kind, &v[i]);
        if (!ok)
            Py_RETURN_FALSE;
    }
    ((site_fn)(uintptr_t)address)(v[0], v[1], v[2], v[3], v[4], v[5]);
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"fire", (PyCFunction)(void (*)(void))fire, METH_FASTCALL,
     "fire(address, kinds, *args) -> bool: check, convert and fire; False means take the Python path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fastfire", "Fire runtime USDT probes in one C call.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastfire(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddIntConstant(module, "MAX_STRING_BYTES", MAX_STRING_BYTES) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
