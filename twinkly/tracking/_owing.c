/* owe(): twinkly/tracking/owing.py's python_owe, message for message.
 *
 * For C trackers the expectation is pushed directly (expect_kind, _tracker.c); any
 * other tracker gets its expect() called. A Query's context is made here when the
 * contexts are a plain ClientContexts (its context() would return the same tuple);
 * every other message's context comes from contexts.context(). */
#include "_tracker.h"

static PyTypeObject *plain_contexts;  /* twinkly.tracking.contexts.ClientContexts */
static PyObject *s_context, *s_expect, *no_types;

static int
kind_for(int type, const char *payload, Py_ssize_t size)
{
    switch (type) {
    case 'Q': return K_QUERY;
    case 'P': return K_PARSE;
    case 'B': return K_BIND;
    case 'D': return size > 0 && payload[0] == 'P' ? K_DESCRIBE_PORTAL : K_DESCRIBE_STATEMENT;
    case 'E': return K_EXECUTE;
    case 'C': return K_CLOSE;
    case 'S': return K_SYNC;
    case 'F': return K_FUNCTION_CALL;
    case 'c': case 'f': return K_COPY_END;
    default: return -1;
    }
}

/* ``word`` (lower case) anywhere in p[0:n], ASCII letters of p compared lowered: what
 * ``word in payload.lower()`` finds. */
static int
contains_lowered(const char *p, Py_ssize_t n, const char *word, Py_ssize_t w)
{
    for (Py_ssize_t i = 0; i + w <= n; i++) {
        Py_ssize_t j = 0;
        while (j < w) {
            char c = p[i + j];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c != word[j])
                break;
            j++;
        }
        if (j == w)
            return 1;
    }
    return 0;
}

static int
may_copy_from(const char *p, Py_ssize_t n)
{
    return contains_lowered(p, n, "copy", 4) && contains_lowered(p, n, "stdin", 5);
}

static int
push(PyObject *tracker, int kind, double now, long long seq, PyObject *context)
{
    if (PyObject_TypeCheck(tracker, &TrackerType))
        return expect_kind((Tracker *)tracker, kind, now, seq, context);
    PyObject *when = PyFloat_FromDouble(now), *number = PyLong_FromLongLong(seq);
    PyObject *done = NULL;
    if (when != NULL && number != NULL) {
        PyObject *args[5] = {tracker, kind_strs[kind], when, number, context};
        done = PyObject_VectorcallMethod(s_expect, args, 5, NULL);
    }
    Py_XDECREF(when);
    Py_XDECREF(number);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return 0;
}

static PyObject *
context_of(PyObject *contexts, int type, PyObject *type_obj, PyObject *payload)
{
    if (type == 'Q' && Py_TYPE(contexts) == plain_contexts) {
        Py_ssize_t n = PyBytes_GET_SIZE(payload);
        PyObject *sql = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(payload), n > 0 ? n - 1 : 0,
                                             "replace");
        return sql ? PyTuple_Pack(3, sql, Py_None, no_types) : NULL;
    }
    PyObject *args[3] = {contexts, type_obj, payload};
    return PyObject_VectorcallMethod(s_context, args, 3, NULL);
}

PyObject *
module_owe(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "owe(messages, now, seq, truth, target, contexts)");
        return NULL;
    }
    PyObject *messages = args[0], *truth = args[3], *target = args[4], *contexts = args[5];
    double now = PyFloat_AsDouble(args[1]);
    long long seq = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyList_Check(messages)) {
        PyErr_SetString(PyExc_TypeError, "owe: a list of messages expected");
        return NULL;
    }
    long long hold_seq = 0;
    int terminate = 0, copy_from = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(messages); i++) {
        PyObject *message = PyList_GET_ITEM(messages, i);
        if (!PyTuple_Check(message) || PyTuple_GET_SIZE(message) != 2
            || !PyBytes_Check(PyTuple_GET_ITEM(message, 1))) {
            PyErr_SetString(PyExc_TypeError, "owe: (type, payload) messages expected");
            return NULL;
        }
        PyObject *type_obj = PyTuple_GET_ITEM(message, 0), *payload = PyTuple_GET_ITEM(message, 1);
        long type = PyLong_AsLong(type_obj);
        if (type == -1 && PyErr_Occurred())
            return NULL;
        const char *p = PyBytes_AS_STRING(payload);
        Py_ssize_t n = PyBytes_GET_SIZE(payload);
        int kind = kind_for((int)type, p, n);
        if (kind < 0) {
            if (type == 'X')
                terminate = 1;
            continue;
        }
        seq++;
        PyObject *context = contexts != Py_None && type != 'S'
                                ? context_of(contexts, (int)type, type_obj, payload)
                                : Py_NewRef(Py_None);
        if (context == NULL)
            return NULL;
        int failed = push(truth, kind, now, seq, context) < 0
                     || (target != Py_None && push(target, kind, now, seq, context) < 0);
        Py_DECREF(context);
        if (failed)
            return NULL;
        if (type == 'Q' || type == 'P') {
            copy_from = may_copy_from(p, n);
            if (copy_from && type == 'Q')
                hold_seq = seq;
        } else if (type == 'E' && copy_from) {
            hold_seq = seq;
        }
    }
    return Py_BuildValue("(LLO)", seq, hold_seq, terminate ? Py_True : Py_False);
}

PyObject *
module_setup_owing(PyObject *module, PyObject *arg)
{
    if (!PyType_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "setup_owing(ClientContexts)");
        return NULL;
    }
    Py_XSETREF(plain_contexts, (PyTypeObject *)Py_NewRef(arg));
    Py_RETURN_NONE;
}

int
owing_ready(void)
{
    s_context = PyUnicode_InternFromString("context");
    s_expect = PyUnicode_InternFromString("expect");
    no_types = PyTuple_New(0);
    return s_context && s_expect && no_types ? 0 : -1;
}
