/* Result and Sync: what the C tracker makes (subclassed in results.py). */
#include "_tracker.h"

const char *kind_names[K_COUNT] = {"Q", "P", "B", "DS", "DP", "E", "C", "S", "F", "c"};
PyObject *kind_strs[K_COUNT];
PyTypeObject *result_type, *sync_type;

/* ---- Result: everything one backend answered to one request ----------------------- */


Result *
result_make(PyTypeObject *type, int kind, PyObject *request, double started, long long key,
            PyObject *context)
{
    Result *r = (Result *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    r->kind = kind;
    Py_INCREF(request);
    r->request = request;
    Py_INCREF(context);
    r->context = context;
    r->sample = context != Py_None ? PyList_New(0) : Py_NewRef(Py_None);
    if (r->sample == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    r->columns = Py_NewRef(Py_None);
    r->parameter_types = Py_NewRef(Py_None);
    r->tag = Py_NewRef(Py_None);
    r->error = Py_NewRef(Py_None);
    r->copy = Py_NewRef(Py_None);
    r->key = key;
    r->started = r->finished = started;
    r->timed = 1;
    return r;
}

int
kind_of(PyObject *name)
{
    for (int k = 0; k < K_COUNT; k++)
        if (name == kind_strs[k])
            return k;
    if (!PyUnicode_Check(name))
        return -1;
    for (int k = 0; k < K_COUNT; k++)
        if (PyUnicode_CompareWithASCIIString(name, kind_names[k]) == 0)
            return k;
    return -1;  /* a request this tracker never owes (a test's own label) */
}

static PyObject *
result_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"request", "started", "key", "context", NULL};
    PyObject *request, *context = Py_None;
    double started;
    long long key = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Ud|LO:StatementResult", names, &request,
                                     &started, &key, &context))
        return NULL;
    return (PyObject *)result_make(type, kind_of(request), request, started, key, context);
}

static void
result_dealloc(Result *r)
{
    Py_XDECREF(r->request);
    Py_XDECREF(r->context);
    Py_XDECREF(r->sample);
    Py_XDECREF(r->columns);
    Py_XDECREF(r->parameter_types);
    Py_XDECREF(r->tag);
    Py_XDECREF(r->error);
    Py_XDECREF(r->copy);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

#define OBJ(name) {#name, T_OBJECT, offsetof(Result, name), 0, NULL}
static PyMemberDef result_members[] = {
    OBJ(request), OBJ(context), OBJ(sample), OBJ(columns), OBJ(parameter_types), OBJ(tag),
    OBJ(error), OBJ(copy),
    {"key", T_LONGLONG, offsetof(Result, key), 0, NULL},
    {"end", T_PYSSIZET, offsetof(Result, end), 0, NULL},
    {"rows", T_PYSSIZET, offsetof(Result, rows), 0, NULL},
    {"digest", T_ULONGLONG, offsetof(Result, digest), 0, NULL},
    {"started", T_DOUBLE, offsetof(Result, started), 0, NULL},
    {"finished", T_DOUBLE, offsetof(Result, finished), 0, NULL},
    {"timed", T_BOOL, offsetof(Result, timed), 0, NULL},
    {"columns_described", T_BOOL, offsetof(Result, columns_described), 0, NULL},
    {"empty", T_BOOL, offsetof(Result, empty), 0, NULL},
    {"suspended", T_BOOL, offsetof(Result, suspended), 0, NULL},
    {NULL},
};
#undef OBJ

static PyObject *
result_elapsed(Result *r, void *closure)
{
    return PyFloat_FromDouble(r->finished - r->started);
}

static PyGetSetDef result_getset[] = {
    {"elapsed", (getter)result_elapsed, NULL, "finished - started, in seconds", NULL},
    {NULL},
};

PyTypeObject ResultType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "twinkly.tracking._tracker.Result",
    .tp_basicsize = sizeof(Result),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A statement result's fields (see twinkly.tracking.results.StatementResult).",
    .tp_new = result_new,
    .tp_dealloc = (destructor)result_dealloc,
    .tp_members = result_members,
    .tp_getset = result_getset,
};

/* ---- Sync: a ReadyForQuery ---------------------------------------------------------- */


PyObject *
sync_make(PyTypeObject *type, PyObject *status, double time, long long key, Py_ssize_t end)
{
    Sync *s = (Sync *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    Py_INCREF(status);
    s->status = status;
    s->time = time;
    s->key = key;
    s->end = end;
    return (PyObject *)s;
}

static PyObject *
sync_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"status", "time", "key", "end", NULL};
    PyObject *status;
    double time;
    long long key = SYNC_SUB;
    Py_ssize_t end = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Od|Ln:SyncPoint", names, &status, &time,
                                     &key, &end))
        return NULL;
    return sync_make(type, status, time, key, end);
}

static void
sync_dealloc(Sync *s)
{
    Py_XDECREF(s->status);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyMemberDef sync_members[] = {
    {"status", T_OBJECT, offsetof(Sync, status), 0, NULL},
    {"time", T_DOUBLE, offsetof(Sync, time), 0, NULL},
    {"key", T_LONGLONG, offsetof(Sync, key), 0, NULL},
    {"end", T_PYSSIZET, offsetof(Sync, end), 0, NULL},
    {NULL},
};

PyTypeObject SyncType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "twinkly.tracking._tracker.Sync",
    .tp_basicsize = sizeof(Sync),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A sync point's fields (see twinkly.tracking.results.SyncPoint).",
    .tp_new = sync_new,
    .tp_dealloc = (destructor)sync_dealloc,
    .tp_members = sync_members,
};
