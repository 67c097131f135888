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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <structmember.h>

#define SUB_BITS 20
#define SYNC_SUB ((1LL << SUB_BITS) - 1)

/* What a client message makes the backend owe (python_tracker's QUERY ... COPY_END). */
enum { K_QUERY, K_PARSE, K_BIND, K_DESCRIBE_STATEMENT, K_DESCRIBE_PORTAL, K_EXECUTE,
       K_CLOSE, K_SYNC, K_FUNCTION_CALL, K_COPY_END, K_COUNT };
static const char *kind_names[K_COUNT] = {"Q", "P", "B", "DS", "DP", "E", "C", "S", "F", "c"};
static PyObject *kind_strs[K_COUNT];

#define ENDS_WITH_READY(k) ((k) == K_QUERY || (k) == K_SYNC || (k) == K_FUNCTION_CALL)
#define EXECUTING(k) ((k) == K_EXECUTE || (k) == K_QUERY || (k) == K_FUNCTION_CALL)

static PyTypeObject *result_type, *sync_type;  /* the registered subclasses */
static PyObject *str_join, *str_limit, *str_held;

static inline uint32_t
read_len(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ---- Result: everything one backend answered to one request ----------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *request, *context, *sample, *columns, *parameter_types, *tag, *error, *copy;
    long long key;
    Py_ssize_t end, rows;
    unsigned long long digest;
    double started, finished;
    char timed, columns_described, empty, suspended;
    int kind;
} Result;

static Result *
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

static int
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

static PyTypeObject ResultType = {
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

typedef struct {
    PyObject_HEAD
    PyObject *status;
    double time;
    long long key;
    Py_ssize_t end;
} Sync;

static PyObject *
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

static PyTypeObject SyncType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "twinkly.tracking._tracker.Sync",
    .tp_basicsize = sizeof(Sync),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A sync point's fields (see twinkly.tracking.results.SyncPoint).",
    .tp_new = sync_new,
    .tp_dealloc = (destructor)sync_dealloc,
    .tp_members = sync_members,
};

/* ---- Tracker ------------------------------------------------------------------------ */

typedef struct {
    int kind;
    double sent;
    long long seq;
    PyObject *context;  /* owned */
} Owed;

typedef struct {
    PyObject_HEAD
    PyObject *emit, *clock, *status, *lost_track, *parameters, *on_copy_in;
    Result *current;
    PyObject *described_sql, *described_columns;  /* both NULL: nothing described */
    Owed *owed;
    Py_ssize_t head, count, cap;  /* a ring of cap entries, count from head */
    long statement, group_executes;
    char skipping, copy_in_syncs, copy_in, fatal;
    Py_ssize_t sample_rows, consumed, message_end;
    long long last_key, copy_key;
    double last_ready, paused_since, last_resumed;  /* paused_since: NAN when not paused */
} Tracker;

static inline Owed *
owed_at(Tracker *t, Py_ssize_t i)
{
    return &t->owed[(t->head + i) % t->cap];
}

static int
owed_append(Tracker *t, int kind, double sent, long long seq, PyObject *context)
{
    if (t->count == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 8;
        Owed *grown = PyMem_Malloc(sizeof(Owed) * cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < t->count; i++)
            grown[i] = *owed_at(t, i);
        PyMem_Free(t->owed);
        t->owed = grown;
        t->cap = cap;
        t->head = 0;
    }
    Owed *e = &t->owed[(t->head + t->count) % t->cap];
    e->kind = kind;
    e->sent = sent;
    e->seq = seq;
    Py_INCREF(context);
    e->context = context;
    t->count++;
    return 0;
}

static void
owed_popleft(Tracker *t)
{
    Owed *e = owed_at(t, 0);
    Py_CLEAR(e->context);
    t->head = (t->head + 1) % t->cap;
    t->count--;
}

static void
owed_clear(Tracker *t)
{
    while (t->count)
        owed_popleft(t);
}

static int
call_clock(Tracker *t, double *now)
{
    PyObject *value = PyObject_CallNoArgs(t->clock);
    if (value == NULL)
        return -1;
    *now = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return (*now == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int
emit(Tracker *t, PyObject *item)
{
    PyObject *ret = PyObject_CallOneArg(t->emit, item);
    Py_DECREF(item);
    if (ret == NULL)
        return -1;
    Py_DECREF(ret);
    return 0;
}

static void
lose_track(Tracker *t, PyObject *why)  /* steals why (NULL: a failure making it, ignored) */
{
    if (why == NULL) {
        PyErr_Clear();
        why = PyUnicode_FromString("lost track");
    }
    if (t->lost_track == Py_None && why != NULL) {
        Py_SETREF(t->lost_track, why);
    } else {
        Py_XDECREF(why);
    }
    owed_clear(t);
    Py_CLEAR(t->current);
    t->statement = 0;
}

static PyObject *
type_char(int type_byte)
{
    PyObject *ch = PyUnicode_FromOrdinal(type_byte);
    if (ch == NULL)
        return NULL;
    PyObject *shown = PyObject_Repr(ch);
    Py_DECREF(ch);
    return shown;
}

/* What is owed next, past the markers of COPYs that are over (NULL: nothing). */
static Owed *
head_entry(Tracker *t)
{
    while (t->count && owed_at(t, 0)->kind == K_COPY_END)
        owed_popleft(t);
    return t->count ? owed_at(t, 0) : NULL;
}

static int
alone_in_group(Tracker *t)
{
    for (Py_ssize_t i = 0; i < t->count; i++) {
        int kind = owed_at(t, i)->kind;
        if (i && EXECUTING(kind))
            return 0;
        if (kind == K_SYNC)
            return 1;
    }
    return 1;
}

/* The result being received, started from the head of the queue if need be. Returns 0
 * with *out NULL when nothing is owed, -1 on error. */
static int
start(Tracker *t, Result **out)
{
    if (t->current == NULL) {
        Owed *head = head_entry(t);
        if (head == NULL) {
            *out = NULL;
            return 0;
        }
        double started = head->sent > t->last_ready ? head->sent : t->last_ready;
        Result *r = result_make(result_type, head->kind, kind_strs[head->kind], started,
                                (head->seq << SUB_BITS) | t->statement, head->context);
        if (r == NULL)
            return -1;
        if (head->kind == K_EXECUTE) {
            t->group_executes++;
            r->timed = t->group_executes == 1 && alone_in_group(t);
        } else if (t->group_executes) {
            r->timed = 0;
        }
        PyObject *context = head->context;
        if (head->kind == K_EXECUTE && t->described_columns != NULL && PyObject_IsTrue(context)) {
            PyObject *sql = PySequence_GetItem(context, 0);
            if (sql == NULL) {
                Py_DECREF(r);
                return -1;
            }
            int same = PyObject_RichCompareBool(sql, t->described_sql, Py_EQ);
            Py_DECREF(sql);
            if (same < 0) {
                Py_DECREF(r);
                return -1;
            }
            if (same) {
                Py_SETREF(r->columns, Py_NewRef(t->described_columns));
                r->columns_described = 1;
            }
        }
        t->current = r;
    }
    *out = t->current;
    return 0;
}

static int
finish(Tracker *t, int pop)
{
    double now;
    if (call_clock(t, &now) < 0)
        return -1;
    Result *r = t->current;
    if (r != NULL) {
        t->current = NULL;  /* the reference moves to emit */
        r->finished = now;
        if (!isnan(t->paused_since) || t->last_resumed > r->started)
            r->timed = 0;
        r->end = t->message_end;
        t->copy_in = 0;
        t->last_key = r->key;
        if (t->count && ENDS_WITH_READY(r->kind) && !pop) {
            owed_at(t, 0)->sent = now;  /* the next statement of a simple query starts now */
            t->statement++;
        }
        if (emit(t, (PyObject *)r) < 0)
            return -1;
    }
    if (pop && t->count)
        owed_popleft(t);
    return 0;
}

/* An ErrorResponse whose severity ends the session: PostgreSQL sends S first; other
 * servers are read field by field, as error_fields would (the last S counts). */
static int
is_fatal(const char *p, Py_ssize_t n)
{
    if (n >= 1 && p[0] == 'S')
        return n >= 7 && (memcmp(p, "SFATAL\0", 7) == 0 || memcmp(p, "SPANIC\0", 7) == 0);
    int fatal = 0;
    Py_ssize_t i = 0;
    while (i < n && p[i] != '\0') {
        char code = p[i++];
        const char *value = p + i;
        const char *nul = memchr(value, '\0', n - i);
        Py_ssize_t len = nul ? nul - value : n - i;
        if (code == 'S')
            fatal = len == 5 && (memcmp(value, "FATAL", 5) == 0 || memcmp(value, "PANIC", 5) == 0);
        i += len + 1;
    }
    return fatal;
}

static int
error_response(Tracker *t, Result *r, PyObject *payload)
{
    Py_SETREF(r->error, Py_NewRef(payload));
    if (ENDS_WITH_READY(r->kind))
        return finish(t, 0);
    /* Extended protocol: the backend now ignores everything until Sync. */
    if (finish(t, 1) < 0)
        return -1;
    t->copy_in_syncs = 0;
    while (t->count && owed_at(t, 0)->kind != K_SYNC)
        owed_popleft(t);
    if (!t->count)
        t->skipping = 1;
    return 0;
}

/* An extended-protocol COPY FROM STDIN began: the backend ignores any Sync the client
 * sent before ending the COPY (libpq sends one right after Execute). */
static void
ignore_syncs_during_copy(Tracker *t)
{
    Py_ssize_t kept = t->count ? 1 : 0, i;
    int ended = 0;
    for (i = kept; i < t->count; i++) {
        Owed *e = owed_at(t, i);
        if (!ended && e->kind == K_SYNC) {
            Py_CLEAR(e->context);
            continue;
        }
        if (e->kind == K_COPY_END)
            ended = 1;
        *owed_at(t, kept++) = *e;
    }
    t->count = kept;
    if (!ended)
        t->copy_in_syncs = 1;
}

static int
ready(Tracker *t, const char *p, Py_ssize_t n)
{
    PyObject *status = n ? PyUnicode_FromOrdinal((unsigned char)p[0]) : PyUnicode_FromString("?");
    if (status == NULL)
        return -1;
    Py_SETREF(t->status, status);
    if (t->current != NULL && finish(t, 0) < 0)
        return -1;
    Owed *head = head_entry(t);
    if (head == NULL) {
        lose_track(t, PyUnicode_FromString("ReadyForQuery with nothing owed"));
        return 0;
    }
    int kind = head->kind;
    long long seq = head->seq;
    owed_popleft(t);
    if (!ENDS_WITH_READY(kind)) {
        lose_track(t, PyUnicode_FromFormat("ReadyForQuery while owing %s", kind_names[kind]));
        return 0;
    }
    t->skipping = 0;
    t->statement = 0;
    t->group_executes = 0;
    t->last_key = (seq << SUB_BITS) | SYNC_SUB;
    double now;
    if (call_clock(t, &now) < 0)
        return -1;
    t->last_ready = now;
    PyObject *sync = sync_make(sync_type, t->status, now, t->last_key, t->message_end);
    return sync == NULL ? -1 : emit(t, sync);
}

static int
parameter_status(Tracker *t, const char *p, Py_ssize_t n)
{
    const char *nul = memchr(p, '\0', n);
    Py_ssize_t name_len = nul ? nul - p : n;
    const char *rest = nul ? nul + 1 : p + n;
    Py_ssize_t rest_len = p + n - rest;
    while (rest_len && rest[rest_len - 1] == '\0')
        rest_len--;
    PyObject *name = PyBytes_FromStringAndSize(p, name_len);
    PyObject *value = name ? PyBytes_FromStringAndSize(rest, rest_len) : NULL;
    int failed = value == NULL || PyDict_SetItem(t->parameters, name, value) < 0;
    Py_XDECREF(name);
    Py_XDECREF(value);
    return failed ? -1 : 0;
}

/* One message. ``payload`` may be NULL: the bytes object is made only where one is kept. */
static int
handle(Tracker *t, int type, const char *p, Py_ssize_t n, PyObject *payload)
{
    PyObject *made = NULL;
    int rc = 0;
    if (type == 'N' || type == 'A')
        return 0;
    if (type == 'S')
        return parameter_status(t, p, n);
    if (type == 'Z')
        return ready(t, p, n);
    if (type == 'E' && is_fatal(p, n))
        t->fatal = 1;
    Result *r;
    if (start(t, &r) < 0)
        return -1;
    if (r == NULL) {
        if (type != 'E') {
            PyObject *shown = type_char(type);
            lose_track(t, shown ? PyUnicode_FromFormat("unexpected message %U with nothing owed", shown) : NULL);
            Py_XDECREF(shown);
        }
        return 0;
    }
    if (payload == NULL && (type == 'T' || type == 'E' || type == 't' || type == 'D' || type == 'd')) {
        payload = made = PyBytes_FromStringAndSize(p, n);
        if (payload == NULL)
            return -1;
    }
    int kind = r->kind;
    switch (type) {
    case 'C': {
        PyObject *tag = PyBytes_FromStringAndSize(p, n ? n - 1 : 0);
        if (tag == NULL)
            return -1;
        Py_SETREF(r->tag, tag);
        rc = finish(t, !ENDS_WITH_READY(kind));
        break;
    }
    case 'T':
        Py_SETREF(r->columns, Py_NewRef(payload));
        if (kind == K_DESCRIBE_STATEMENT || kind == K_DESCRIBE_PORTAL) {
            PyObject *sql = Py_None;
            int truthy = PyObject_IsTrue(r->context);
            if (truthy < 0) {
                rc = -1;
                break;
            }
            if (truthy) {
                sql = PySequence_GetItem(r->context, 0);
                if (sql == NULL) {
                    rc = -1;
                    break;
                }
            } else {
                Py_INCREF(sql);
            }
            Py_XSETREF(t->described_sql, sql);
            Py_XSETREF(t->described_columns, Py_NewRef(payload));
            rc = finish(t, 1);
        }
        break;
    case 'E':
        rc = error_response(t, r, payload);
        break;
    case 'I':
        r->empty = 1;
        rc = finish(t, !ENDS_WITH_READY(kind));
        break;
    case 's':
        r->suspended = 1;
        rc = finish(t, 1);
        break;
    case '1': case '2': case '3': case 'n':
        rc = finish(t, 1);
        break;
    case 't':
        Py_SETREF(r->parameter_types, Py_NewRef(payload));
        break;
    case 'G':
        Py_SETREF(r->copy, PyUnicode_FromString("in"));
        t->copy_in = 1;
        t->copy_key = r->key;
        if (kind == K_EXECUTE)
            ignore_syncs_during_copy(t);
        if (t->on_copy_in != NULL && t->on_copy_in != Py_None) {
            PyObject *ret = PyObject_CallNoArgs(t->on_copy_in);
            if (ret == NULL)
                rc = -1;
            Py_XDECREF(ret);
        }
        break;
    case 'H': case 'W':
        Py_SETREF(r->copy, PyUnicode_FromString(type == 'H' ? "out" : "both"));
        break;
    case 'c':
        break;
    case 'V':
        r->rows = 1;
        r->digest = (unsigned long long)_Py_HashBytes(p, n);
        rc = finish(t, 0);
        break;
    case 'D': case 'd':  /* rows arriving through feed(); receive() counts them inline */
        r->rows++;
        r->digest += (unsigned long long)PyObject_Hash(payload);
        if (r->sample != Py_None) {
            if (r->rows <= t->sample_rows)
                rc = PyList_Append(r->sample, payload);
            else
                Py_SETREF(r->sample, Py_NewRef(Py_None));
        }
        break;
    default: {
        PyObject *shown = type_char(type);
        lose_track(t, shown ? PyUnicode_FromFormat("unexpected message %U for request %s", shown,
                                                   kind_names[kind]) : NULL);
        Py_XDECREF(shown);
    }
    }
    Py_XDECREF(made);
    return rc;
}

static Py_ssize_t
sample_room(Tracker *t, Result *r)
{
    if (r == NULL || r->sample == Py_None || !PyList_Check(r->sample))
        return -1;
    return t->sample_rows - PyList_GET_SIZE(r->sample);
}

/* Count and digest a run of DataRow/CopyData messages from *pos (see accel.scan_rows). */
static int
scan_rows(Tracker *t, Result *r, const unsigned char *data, Py_ssize_t size, Py_ssize_t *pos,
          Py_ssize_t limit, Py_ssize_t *room, Py_ssize_t *rows, uint64_t *digest)
{
    Py_ssize_t at = *pos;
    while (size - at >= 5) {
        unsigned char type = data[at];
        if (type != 'D' && type != 'd')
            break;
        Py_ssize_t length = (Py_ssize_t)read_len(data + at + 1);
        if (length < 4 || length > limit)
            break;
        Py_ssize_t end = at + 1 + length;
        if (end > size)
            break;
        const char *row = (const char *)data + at + 5;
        if (*room > 0) {
            PyObject *copy = PyBytes_FromStringAndSize(row, length - 4);
            if (copy == NULL)
                return -1;
            Py_hash_t h = PyObject_Hash(copy);
            int failed = h == -1 || PyList_Append(r->sample, copy);
            Py_DECREF(copy);
            if (failed)
                return -1;
            *digest += (uint64_t)h;
            (*room)--;
        } else {
            if (*room == 0)
                *room = -1;
            *digest += (uint64_t)_Py_HashBytes(row, length - 4);
        }
        (*rows)++;
        at = end;
    }
    *pos = at;
    return 0;
}

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
        if (handle(t, type, (const char *)data + pos + 5, length - 4, NULL) < 0)
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
            ok = handle(t, type, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), payload) == 0;
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
    if (t->copy_in_syncs) {
        if (kind == K_SYNC)
            Py_RETURN_NONE;  /* the backend ignores Sync during COPY FROM STDIN */
        if (kind == K_COPY_END)
            t->copy_in_syncs = 0;
    }
    if (t->skipping) {
        if (kind != K_SYNC)
            Py_RETURN_NONE;
        t->skipping = 0;
    }
    if (owed_append(t, kind, now, seq, context) < 0)
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

static PyTypeObject TrackerType = {
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
        PyType_Ready(&TrackerType) < 0)
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
        PyModule_AddIntConstant(m, "SUB_BITS", SUB_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
