/* One backend's response stream -> statement results and sync points, in C.
 *
 * The same state machine as twinkly/tracking/python_tracker.py, message for message:
 * tests/unit/tracking/test_responses.py runs every case on both. The Python module is the
 * reference; this one exists because a select-only statement costs the Python tracker
 * about a dozen calls per backend (receive, _handle per message, _start, _finish, _ready,
 * two objects), and a busy proxy does that for every statement on both backends.
 *
 * Three types: Result and Sync (subclassed in twinkly/tracking/results.py, which adds
 * the properties that decode) and Tracker. The subclasses register themselves with
 * register(result_type, sync_type), so what the tracker emits is what Python code
 * imports and checks with ``type(item) is SyncPoint``.
 *
 * Five files share _tracker.h: _tracker_results.c (Result and Sync), _tracker_machine.c
 * (what each backend message does to what is owed), _pairer.c (the pairer's common
 * steps, PairerCore), _owing.c (what the client's messages owe) and this one (the ResponseTracker type and the module).
 */
#include "_tracker.h"

static PyObject *str_join, *str_limit, *str_held;

/* ---- Tracker: the Python type ------------------------------------------------------ */

static PyObject *
tracker_receive(Tracker *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "receive(framer, data)");
        return NULL;
    }
    PyObject *framer = args[0];
    /* framer.join(data) only when it holds part of a message: it returns data itself
     * otherwise, and ``held`` is a plain attribute (no Python frame to read it). */
    PyObject *held = PyObject_GetAttr(framer, str_held);
    if (held == NULL)
        return NULL;
    int holding = PyObject_IsTrue(held);
    Py_DECREF(held);
    if (holding < 0)
        return NULL;
    PyObject *joined = holding ? PyObject_CallMethodOneArg(framer, str_join, args[1])
                               : Py_NewRef(args[1]);
    if (joined == NULL)
        return NULL;
    if (joined == Py_None) {
        Py_DECREF(joined);
        Py_RETURN_NONE;
    }
    if (!PyBytes_Check(joined)) {
        Py_DECREF(joined);
        PyErr_SetString(PyExc_TypeError, "receive: the framer must join into bytes");
        return NULL;
    }
    PyObject *limit_obj = PyObject_GetAttr(framer, str_limit);
    Py_ssize_t limit = limit_obj ? PyLong_AsSsize_t(limit_obj) : -1;
    Py_XDECREF(limit_obj);
    if (limit == -1 && PyErr_Occurred()) {
        Py_DECREF(joined);
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(joined);
    Py_ssize_t size = PyBytes_GET_SIZE(joined), pos = 0, need = 5, base = t->consumed;
    Py_ssize_t rows = 0, room = sample_room(t, t->current);
    uint64_t digest = 0;
    while (size - pos >= 5) {
        int type = data[pos];
        Result *r = t->current;
        if (r != NULL && (type == 'D' || type == 'd')) {
            Py_ssize_t before = pos;
            if (scan_rows(t, r, data, size, &pos, limit, &room, &rows, &digest) < 0)
                goto error;
            if (pos != before) {
                if (room < 0 && r->sample != Py_None)
                    Py_SETREF(r->sample, Py_NewRef(Py_None));  /* more rows than kept */
                continue;
            }
        }
        Py_ssize_t length = (Py_ssize_t)read_len(data + pos + 1);
        if (length < 4 || length > limit) {
            PyObject *e = PyObject_CallMethod(framer, "length_error", "Onn", joined, pos, length);
            if (e != NULL) {
                PyErr_SetObject((PyObject *)Py_TYPE(e), e);
                Py_DECREF(e);
            }
            goto error;
        }
        Py_ssize_t end = pos + 1 + length;
        if (end > size) {
            need = end - pos;
            break;
        }
        if (rows) {
            r->rows += rows;
            r->digest += digest;
            rows = 0;
            digest = 0;
        }
        t->message_end = base + end;
        if (handle_message(t, type, (const char *)data + pos + 5, length - 4, NULL) < 0)
            goto error;
        room = sample_room(t, t->current);
        pos = end;
    }
    if (rows) {
        t->current->rows += rows;
        t->current->digest += digest;
    }
    t->consumed = base + pos;
    if (pos < size) {
        PyObject *ret = PyObject_CallMethod(framer, "hold", "Onn", joined, pos, need);
        if (ret == NULL)
            goto error;
        Py_DECREF(ret);
    }
    Py_DECREF(joined);
    Py_RETURN_NONE;
error:
    Py_DECREF(joined);
    return NULL;
}

static PyObject *
tracker_feed(Tracker *t, PyObject *messages)
{
    PyObject *iter = PyObject_GetIter(messages), *item;
    if (iter == NULL)
        return NULL;
    while ((item = PyIter_Next(iter)) != NULL) {
        int type;
        PyObject *payload;
        int ok = PyArg_ParseTuple(item, "iS", &type, &payload);
        if (ok) {
            Py_INCREF(payload);
            ok = handle_message(t, type, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload),
                                payload) == 0;
            Py_DECREF(payload);
        }
        Py_DECREF(item);
        if (!ok) {
            Py_DECREF(iter);
            return NULL;
        }
    }
    Py_DECREF(iter);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

int
expect_kind(Tracker *t, int kind, double now, long long seq, PyObject *context)
{
    if (t->copy_in_syncs) {
        if (kind == K_SYNC)
            return 0;  /* the backend ignores Sync during COPY FROM STDIN */
        if (kind == K_COPY_END)
            t->copy_in_syncs = 0;
    }
    if (t->skipping) {
        if (kind != K_SYNC)
            return 0;
        t->skipping = 0;
    }
    return owed_append(t, kind, now, seq, context);
}

static PyObject *
tracker_expect(Tracker *t, PyObject *const *args, Py_ssize_t nargs)
{
    /* Positional only, parsed by hand: the session calls this for every message. */
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "expect(kind, now, seq=0, context=None)");
        return NULL;
    }
    PyObject *name = args[0], *context = nargs > 3 ? args[3] : Py_None;
    double now = PyFloat_AsDouble(args[1]);
    long long seq = nargs > 2 ? PyLong_AsLongLong(args[2]) : 0;
    if (PyErr_Occurred())
        return NULL;
    int kind = kind_of(name);
    if (kind < 0) {
        PyErr_Format(PyExc_ValueError, "expect: unknown request %R", name);
        return NULL;
    }
    if (expect_kind(t, kind, now, seq, context) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
tracker_paused(Tracker *t, PyObject *unused)
{
    if (isnan(t->paused_since) && call_clock(t, &t->paused_since) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
tracker_resumed(Tracker *t, PyObject *unused)
{
    if (!isnan(t->paused_since)) {
        t->paused_since = NAN;
        if (call_clock(t, &t->last_resumed) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
tracker_sent(Tracker *t, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    for (Py_ssize_t i = 0; i < t->count; i++) {
        Owed *e = owed_at(t, i);
        if (e->sent < now)
            e->sent = now;
    }
    Py_RETURN_NONE;
}

static PyObject *
tracker_owed_contexts(Tracker *t, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < t->count; i++) {
        PyObject *context = owed_at(t, i)->context;
        if (context != Py_None && PyList_Append(out, context) < 0)
            Py_CLEAR(out);
    }
    return out;
}

static int
tracker_init(Tracker *t, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"emit", "clock", "sample_rows", "on_copy_in", NULL};
    PyObject *emit_, *clock, *on_copy_in = Py_None;
    Py_ssize_t sample_rows = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|nO:ResponseTracker", names, &emit_, &clock,
                                     &sample_rows, &on_copy_in))
        return -1;
    Py_XSETREF(t->emit, Py_NewRef(emit_));
    Py_XSETREF(t->clock, Py_NewRef(clock));
    Py_XSETREF(t->on_copy_in, Py_NewRef(on_copy_in));
    Py_XSETREF(t->status, PyUnicode_FromString("I"));
    Py_XSETREF(t->lost_track, Py_NewRef(Py_None));
    Py_XSETREF(t->parameters, PyDict_New());
    if (t->status == NULL || t->parameters == NULL)
        return -1;
    t->sample_rows = sample_rows;
    t->last_key = t->copy_key = -1;
    t->paused_since = NAN;
    return 0;
}

static int
tracker_traverse(Tracker *t, visitproc visit, void *arg)
{
    Py_VISIT(t->emit);
    Py_VISIT(t->clock);
    Py_VISIT(t->on_copy_in);
    Py_VISIT(t->parameters);
    Py_VISIT((PyObject *)t->current);
    Py_VISIT(t->described_sql);
    for (Py_ssize_t i = 0; i < t->count; i++)
        Py_VISIT(owed_at(t, i)->context);
    return 0;
}

static int
tracker_clear(Tracker *t)
{
    Py_CLEAR(t->emit);
    Py_CLEAR(t->clock);
    Py_CLEAR(t->on_copy_in);
    Py_CLEAR(t->parameters);
    Py_CLEAR(t->current);
    Py_CLEAR(t->described_sql);
    Py_CLEAR(t->described_columns);
    Py_CLEAR(t->status);
    Py_CLEAR(t->lost_track);
    if (t->owed != NULL)
        owed_clear(t);
    return 0;
}

static void
tracker_dealloc(Tracker *t)
{
    PyObject_GC_UnTrack(t);
    tracker_clear(t);
    PyMem_Free(t->owed);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *
tracker_get_owed(Tracker *t, void *closure)
{
    return PyLong_FromSsize_t(t->count);
}

static PyObject *
tracker_get_current(Tracker *t, void *closure)
{
    return Py_NewRef(t->current ? (PyObject *)t->current : Py_None);
}

static PyGetSetDef tracker_getset[] = {
    {"owed", (getter)tracker_get_owed, NULL, "how many responses the backend still owes", NULL},
    {"current", (getter)tracker_get_current, NULL, "the result being received, if any", NULL},
    {NULL},
};

static PyMemberDef tracker_members[] = {
    {"status", T_OBJECT, offsetof(Tracker, status), READONLY, NULL},
    {"lost_track", T_OBJECT, offsetof(Tracker, lost_track), READONLY, NULL},
    {"fatal", T_BOOL, offsetof(Tracker, fatal), READONLY, NULL},
    {"copy_in", T_BOOL, offsetof(Tracker, copy_in), 0, NULL},
    {"parameters", T_OBJECT, offsetof(Tracker, parameters), READONLY, NULL},
    {"on_copy_in", T_OBJECT, offsetof(Tracker, on_copy_in), 0, NULL},
    {"sample_rows", T_PYSSIZET, offsetof(Tracker, sample_rows), 0, NULL},
    {"last_key", T_LONGLONG, offsetof(Tracker, last_key), READONLY, NULL},
    {"consumed", T_PYSSIZET, offsetof(Tracker, consumed), READONLY, NULL},
    {"copy_key", T_LONGLONG, offsetof(Tracker, copy_key), READONLY, NULL},
    {NULL},
};

static PyMethodDef tracker_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))tracker_receive, METH_FASTCALL,
     "receive(framer, data): frame raw bytes from the backend and track them"},
    {"feed", (PyCFunction)tracker_feed, METH_O, "feed(messages): track framed messages"},
    {"expect", (PyCFunction)(void (*)(void))tracker_expect, METH_FASTCALL,
     "expect(kind, now, seq=0, context=None): the backend now owes kind"},
    {"paused", (PyCFunction)tracker_paused, METH_NOARGS, "Twinkly stopped reading this backend"},
    {"resumed", (PyCFunction)tracker_resumed, METH_NOARGS, "Twinkly reads this backend again"},
    {"sent", (PyCFunction)tracker_sent, METH_O, "sent(now): held client messages went out now"},
    {"owed_contexts", (PyCFunction)tracker_owed_contexts, METH_NOARGS,
     "the contexts of the statements still owed, oldest first"},
    {NULL},
};

PyTypeObject TrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "twinkly.tracking._tracker.ResponseTracker",
    .tp_basicsize = sizeof(Tracker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One backend's protocol state (see twinkly.tracking.python_tracker).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tracker_init,
    .tp_dealloc = (destructor)tracker_dealloc,
    .tp_traverse = (traverseproc)tracker_traverse,
    .tp_clear = (inquiry)tracker_clear,
    .tp_methods = tracker_methods,
    .tp_members = tracker_members,
    .tp_getset = tracker_getset,
};

/* ---- module ------------------------------------------------------------------------- */

static PyObject *
module_register(PyObject *self, PyObject *args)
{
    PyTypeObject *result, *sync;
    if (!PyArg_ParseTuple(args, "O!O!:register", &PyType_Type, &result, &PyType_Type, &sync))
        return NULL;
    if (!PyType_IsSubtype(result, &ResultType) || !PyType_IsSubtype(sync, &SyncType)) {
        PyErr_SetString(PyExc_TypeError, "register: subclasses of Result and Sync expected");
        return NULL;
    }
    Py_INCREF(result);
    Py_XSETREF(result_type, result);
    Py_INCREF(sync);
    Py_XSETREF(sync_type, sync);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"owe", (PyCFunction)(void (*)(void))module_owe, METH_FASTCALL,
     "owe(messages, now, seq, truth, target, contexts) -> (seq, hold_seq, terminate)"},
    {"setup_owing", module_setup_owing, METH_O, "setup_owing(ClientContexts)"},
    {"register", module_register, METH_VARARGS,
     "register(result_type, sync_type): the classes the tracker makes"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "twinkly.tracking._tracker",
    "C implementation of twinkly.tracking.python_tracker.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__tracker(void)
{
    if (PyType_Ready(&ResultType) < 0 || PyType_Ready(&SyncType) < 0 ||
        PyType_Ready(&TrackerType) < 0 || pairer_ready() < 0 ||
        owing_ready() < 0)
        return NULL;
    for (int k = 0; k < K_COUNT; k++) {
        kind_strs[k] = PyUnicode_InternFromString(kind_names[k]);
        if (kind_strs[k] == NULL)
            return NULL;
    }
    str_join = PyUnicode_InternFromString("join");
    str_limit = PyUnicode_InternFromString("limit");
    str_held = PyUnicode_InternFromString("held");
    if (str_join == NULL || str_limit == NULL || str_held == NULL)
        return NULL;
    result_type = (PyTypeObject *)Py_NewRef(&ResultType);
    sync_type = (PyTypeObject *)Py_NewRef(&SyncType);
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Result", (PyObject *)&ResultType) < 0 ||
        PyModule_AddObjectRef(m, "Sync", (PyObject *)&SyncType) < 0 ||
        PyModule_AddObjectRef(m, "ResponseTracker", (PyObject *)&TrackerType) < 0 ||
        PyModule_AddObjectRef(m, "PairerCore", (PyObject *)&PairerCoreType) < 0 ||
        PyModule_AddIntConstant(m, "SUB_BITS", SUB_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
