/* The tracker's state machine: what each backend message does to what is owed. */
#include "_tracker.h"

/* ---- Tracker ------------------------------------------------------------------------ */



int
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

void
owed_clear(Tracker *t)
{
    while (t->count)
        owed_popleft(t);
}

int
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
int
handle_message(Tracker *t, int type, const char *p, Py_ssize_t n, PyObject *payload)
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

Py_ssize_t
sample_room(Tracker *t, Result *r)
{
    if (r == NULL || r->sample == Py_None || !PyList_Check(r->sample))
        return -1;
    return t->sample_rows - PyList_GET_SIZE(r->sample);
}

/* Count and digest a run of DataRow/CopyData messages from *pos (see accel.scan_rows). */
int
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
