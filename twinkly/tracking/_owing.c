/* owe(): twinkly/tracking/owing.py's python_owe, message for message.
 *
 * For C trackers the expectation is pushed directly (expect_kind, _tracker.c); any
 * other tracker gets its expect() called. When the contexts are a plain ClientContexts,
 * the contexts of well-formed Query, Parse, Bind, Execute and Describe messages are
 * made here, from and into its own dicts, exactly as its context() would; every other
 * message (a malformed one, Close, FunctionCall) is given to contexts.context(). */
#include "_tracker.h"

static PyTypeObject *plain_contexts;  /* twinkly.tracking.contexts.ClientContexts */
static PyObject *s_context, *s_expect, *s_statements, *s_portals, *s_max, *no_types;

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

/* The first NUL of p[from:n], or -1. */
static Py_ssize_t
nul(const char *p, Py_ssize_t n, Py_ssize_t from)
{
    if (from < 0 || from >= n)
        return -1;
    const char *found = memchr(p + from, 0, (size_t)(n - from));
    return found ? found - p : -1;
}

/* ClientContexts._remember: ``value`` under ``name``, as the newest; the oldest name
 * goes past ``max``. */
static int
remember(PyObject *names, PyObject *name, PyObject *value, Py_ssize_t max)
{
    int present = PyDict_Contains(names, name);
    if (present < 0 || (present && PyDict_DelItem(names, name) < 0)
        || PyDict_SetItem(names, name, value) < 0)
        return -1;
    if (PyDict_GET_SIZE(names) > max) {
        Py_ssize_t pos = 0;
        PyObject *oldest, *ignored;
        if (PyDict_Next(names, &pos, &oldest, &ignored)) {
            Py_INCREF(oldest);
            int gone = PyDict_DelItem(names, oldest);
            Py_DECREF(oldest);
            return gone;
        }
    }
    return 0;
}

/* names.get(name) as a new reference (None when absent), or NULL on error. */
static PyObject *
lookup(PyObject *names, const char *p, Py_ssize_t size)
{
    PyObject *name = PyBytes_FromStringAndSize(p, size);
    if (name == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(names, name);
    Py_DECREF(name);
    if (found == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    return Py_NewRef(found);
}

/* ClientContexts.context for a well-formed Parse, Bind, Execute or Describe of a plain
 * ClientContexts; ``*done`` = 0 leaves the message to contexts.context(). */
static PyObject *
named_context(PyObject *contexts, int type, PyObject *payload, int *done)
{
    const char *p = PyBytes_AS_STRING(payload);
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    Py_ssize_t from = type == 'D' ? 1 : 0;
    Py_ssize_t end = nul(p, n, from);
    Py_ssize_t second = type == 'P' || type == 'B' ? nul(p, n, end + 1) : 0;
    *done = 0;
    if (end < 0 || second < 0 || (type == 'D' && p[0] != 'S' && p[0] != 'P'))
        return NULL;  /* malformed: the reference's slicing decides */
    int statement = type == 'P' || (type == 'D' && p[0] == 'S');
    PyObject *names = PyObject_GetAttr(contexts, statement ? s_statements : s_portals);
    if (names == NULL)
        return NULL;
    if (!PyDict_CheckExact(names)) {
        Py_DECREF(names);
        return NULL;
    }
    PyObject *result = NULL;
    *done = 1;
    if (type == 'E' || type == 'D') {
        PyObject *found = lookup(names, p + from, end - from);
        if (found != NULL && type == 'D' && found != Py_None) {
            /* a statement (sql, oids) described as (sql, None, oids) */
            if (PyTuple_Check(found) && PyTuple_GET_SIZE(found) == 2)
                result = PyTuple_Pack(3, PyTuple_GET_ITEM(found, 0), Py_None,
                                      PyTuple_GET_ITEM(found, 1));
            else
                *done = 0;
            Py_DECREF(found);
        } else {
            result = found;
        }
        Py_DECREF(names);
        return result;
    }
    PyObject *max_obj = PyObject_GetAttr(contexts, s_max);
    Py_ssize_t max = max_obj ? PyLong_AsSsize_t(max_obj) : -1;
    Py_XDECREF(max_obj);
    if (max < 0 && PyErr_Occurred()) {
        Py_DECREF(names);
        return NULL;
    }
    PyObject *name = PyBytes_FromStringAndSize(p, end);
    PyObject *value = NULL;
    if (name != NULL && type == 'P') {
        Py_ssize_t count_at = second + 1;
        Py_ssize_t count = count_at + 2 <= n
                               ? ((unsigned char)p[count_at] << 8) | (unsigned char)p[count_at + 1]
                               : -1;
        if (count < 0 || count_at + 2 + 4 * count > n) {
            *done = 0;  /* a short Parse: the reference's slicing decides */
        } else {
            PyObject *sql = PyUnicode_DecodeUTF8(p + end + 1, second - end - 1, "replace");
            PyObject *oids = sql ? PyTuple_New(count) : NULL;
            for (Py_ssize_t i = 0; oids != NULL && i < count; i++) {
                PyObject *oid = PyLong_FromUnsignedLong(read_len(
                    (const unsigned char *)p + count_at + 2 + 4 * i));
                if (oid == NULL)
                    Py_CLEAR(oids);
                else
                    PyTuple_SET_ITEM(oids, i, oid);
            }
            value = oids ? PyTuple_Pack(2, sql, oids) : NULL;
            result = value ? PyTuple_Pack(3, sql, Py_None, oids) : NULL;
            Py_XDECREF(sql);
            Py_XDECREF(oids);
        }
    } else if (name != NULL) {  /* Bind */
        PyObject *statements = PyObject_GetAttr(contexts, s_statements);
        PyObject *found = statements && PyDict_CheckExact(statements)
                              ? lookup(statements, p + end + 1, second - end - 1)
                              : NULL;
        if (statements != NULL && !PyDict_CheckExact(statements))
            *done = 0;
        if (found == Py_None) {
            value = Py_NewRef(Py_None);
        } else if (found != NULL && PyTuple_Check(found) && PyTuple_GET_SIZE(found) == 2) {
            value = PyTuple_Pack(3, PyTuple_GET_ITEM(found, 0), payload,
                                 PyTuple_GET_ITEM(found, 1));
        } else if (found != NULL) {
            *done = 0;
        }
        Py_XDECREF(found);
        Py_XDECREF(statements);
        result = Py_XNewRef(value);
    }
    if (*done && value != NULL
        && remember(names, name, value, max) < 0)
        Py_CLEAR(result);
    Py_XDECREF(value);
    Py_XDECREF(name);
    Py_DECREF(names);
    return result;
}

static PyObject *
context_of(PyObject *contexts, int type, PyObject *type_obj, PyObject *payload)
{
    if (Py_TYPE(contexts) == plain_contexts) {
        if (type == 'Q') {
            Py_ssize_t n = PyBytes_GET_SIZE(payload);
            PyObject *sql = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(payload), n > 0 ? n - 1 : 0,
                                                 "replace");
            PyObject *context = sql ? PyTuple_Pack(3, sql, Py_None, no_types) : NULL;
            Py_XDECREF(sql);
            return context;
        }
        if (type == 'P' || type == 'B' || type == 'E' || type == 'D') {
            int done;
            PyObject *context = named_context(contexts, type, payload, &done);
            if (done || PyErr_Occurred())
                return context;
        }
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
    s_statements = PyUnicode_InternFromString("statements");
    s_portals = PyUnicode_InternFromString("portals");
    s_max = PyUnicode_InternFromString("_max");
    no_types = PyTuple_New(0);
    return s_context && s_expect && s_statements && s_portals && s_max && no_types ? 0 : -1;
}
