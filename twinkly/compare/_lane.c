/* The matched lane in C: twinkly/compare/lane.py's PythonMatchedLane, line for line.
 *
 * It settles the C tracker's results (their fields read from the struct, see
 * twinkly/tracking/_tracker.h) when they are plainly equal, and hands every other pair,
 * and any object that is not the C tracker's, to the comparator unchanged. Everything
 * it needs from Python (the INTERNAL context, the fingerprint cache and its key
 * function, record_pair, teaches) is given once by setup(). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "../tracking/_tracker.h"

/* K_QUERY and K_EXECUTE: twinkly.perf.timing.TIMED ("Q", "E"). */
#define TIMED_KIND(k) ((k) == K_QUERY || (k) == K_EXECUTE)

static PyTypeObject *base_result, *base_sync;  /* twinkly.tracking._tracker's */
static PyObject *internal, *fingerprint_cache, *shape, *record_pair, *teaches, *column_problems;
static Py_ssize_t cached_text = 4096;
static PyObject *s_statements_paired, *s_sync_paired, *s_statement_unpaired,
    *s_truth_sync_alone, *s_pairing_abandoned, *s_verdicts, *s_lost, *s_last_tag,
    *s_settings, *s_exclude, *s_sample_rate, *s_timing, *s_volatile, *s_latency,
    *s_entries, *s_move_to_end, *s_executions, *s_truth, *s_target, *s_truth_all,
    *s_target_all, *s_enabled, *s_ratio, *s_min_seconds, *s_min_samples, *s_outcomes,
    *s_matched, *s_monitor, *one;

typedef struct {
    PyObject_HEAD
    PyObject *comparator, *monitor, *status;
    Py_ssize_t settled;
    char quiet;
    /* monitor.settings, and what the lane reads of it, while it is the same object */
    PyObject *settings;
    char plain_settings, timing;
    /* monitor.latency.settings, likewise */
    PyObject *slow;
    char slow_enabled;
    double ratio, min_seconds;
    long long min_samples;
} Lane;

static int
refresh(Lane *self)
{
    PyObject *verdicts = PyObject_GetAttr(self->comparator, s_verdicts);
    if (verdicts == NULL)
        return -1;
    PyObject *lost = PyObject_GetAttr(self->comparator, s_lost);
    if (lost == NULL) {
        Py_DECREF(verdicts);
        return -1;
    }
    self->quiet = verdicts == Py_None && lost == Py_None;
    Py_DECREF(verdicts);
    Py_DECREF(lost);
    return 0;
}

static int
lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"comparator", NULL};
    PyObject *comparator;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:MatchedLane", names, &comparator))
        return -1;
    PyObject *monitor = PyObject_GetAttr(comparator, s_monitor);
    if (monitor == NULL)
        return -1;
    Py_XSETREF(self->comparator, Py_NewRef(comparator));
    Py_XSETREF(self->monitor, monitor);
    Py_XSETREF(self->status, PyUnicode_FromString("I"));
    if (self->status == NULL)
        return -1;
    self->settled = 0;
    return refresh(self);
}

static int
lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->comparator);
    Py_VISIT(self->monitor);
    Py_VISIT(self->settings);
    Py_VISIT(self->slow);
    return 0;
}

static int
lane_clear(Lane *self)
{
    Py_CLEAR(self->comparator);
    Py_CLEAR(self->monitor);
    Py_CLEAR(self->status);
    Py_CLEAR(self->settings);
    Py_CLEAR(self->slow);
    return 0;
}

static void
lane_dealloc(Lane *self)
{
    PyObject_GC_UnTrack(self);
    lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* What the lane reads of monitor.settings, read again only when it is replaced (a
 * reload). -1: error. */
static int
read_settings(Lane *self, PyObject *settings)
{
    PyObject *exclude = PyObject_GetAttr(settings, s_exclude);
    PyObject *rate = exclude ? PyObject_GetAttr(settings, s_sample_rate) : NULL;
    PyObject *timing = rate ? PyObject_GetAttr(settings, s_timing) : NULL;
    int ok = -1;
    if (timing != NULL) {
        int excluding = PyObject_IsTrue(exclude);
        double sample_rate = PyFloat_AsDouble(rate);
        int timed = PyObject_IsTrue(timing);
        if (excluding >= 0 && timed >= 0 && !(sample_rate == -1.0 && PyErr_Occurred())) {
            self->plain_settings = !excluding && sample_rate >= 1.0;
            self->timing = (char)timed;
            Py_XSETREF(self->settings, Py_NewRef(settings));
            ok = 0;
        }
    }
    Py_XDECREF(exclude);
    Py_XDECREF(rate);
    Py_XDECREF(timing);
    return ok;
}

static int
read_slow(Lane *self, PyObject *slow)
{
    PyObject *enabled = PyObject_GetAttr(slow, s_enabled);
    PyObject *ratio = enabled ? PyObject_GetAttr(slow, s_ratio) : NULL;
    PyObject *seconds = ratio ? PyObject_GetAttr(slow, s_min_seconds) : NULL;
    PyObject *samples = seconds ? PyObject_GetAttr(slow, s_min_samples) : NULL;
    int ok = -1;
    if (samples != NULL) {
        int on = PyObject_IsTrue(enabled);
        self->ratio = PyFloat_AsDouble(ratio);
        self->min_seconds = PyFloat_AsDouble(seconds);
        self->min_samples = PyLong_AsLongLong(samples);
        if (on >= 0 && !PyErr_Occurred()) {
            self->slow_enabled = (char)on;
            Py_XSETREF(self->slow, Py_NewRef(slow));
            ok = 0;
        }
    }
    Py_XDECREF(enabled);
    Py_XDECREF(ratio);
    Py_XDECREF(seconds);
    Py_XDECREF(samples);
    return ok;
}

/* A timing to record once the pair is settled (all references owned). */
typedef struct {
    PyObject *book, *fingerprint, *entry;
    double truth, target;
} Timing;

static void
timing_clear(Timing *t)
{
    Py_CLEAR(t->book);
    Py_CLEAR(t->fingerprint);
    Py_CLEAR(t->entry);
}

enum { TIME_NONE = 1, TIME_COMPARATOR = 0, TIME_RECORD = 2, TIME_ERROR = -1 };

/* PythonMatchedLane._timing: TIME_NONE, TIME_COMPARATOR, TIME_RECORD (``out`` filled) or TIME_ERROR. */
static int
timing_of(Lane *self, Result *truth, Result *target, Timing *out)
{
    PyObject *context = truth->context;
    if (context == Py_None)
        return TIME_NONE;
    if (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 1)
        return TIME_COMPARATOR;
    PyObject *sql = PyTuple_GET_ITEM(context, 0);
    if (!PyUnicode_Check(sql) || PyUnicode_GET_LENGTH(sql) > cached_text)
        return TIME_COMPARATOR;
    PyObject *prints = PyDict_GetItemWithError(fingerprint_cache, sql);  /* borrowed */
    if (prints == NULL) {
        if (PyErr_Occurred())
            return TIME_ERROR;
        PyObject *key = PyObject_CallOneArg(shape, sql);
        if (key == NULL)
            return TIME_ERROR;
        prints = PyDict_GetItemWithError(fingerprint_cache, key);
        Py_DECREF(key);
        if (prints == NULL)
            return PyErr_Occurred() ? TIME_ERROR : TIME_COMPARATOR;
    }
    if (!PyTuple_Check(prints))
        return TIME_COMPARATOR;
    if (PyTuple_GET_SIZE(prints) != 1)
        return TIME_NONE;
    PyObject *fingerprint = PyTuple_GET_ITEM(prints, 0);
    Py_INCREF(fingerprint);  /* the cache may be cleared before it is recorded */
    PyObject *book = PyObject_GetAttr(self->monitor, s_latency);
    PyObject *entries = book ? PyObject_GetAttr(book, s_entries) : NULL;
    PyObject *slow = entries ? PyObject_GetAttr(book, s_settings) : NULL;
    PyObject *entry = NULL, *executions = NULL;
    int outcome = TIME_ERROR;
    if (slow == NULL)
        goto done;
    if (slow != self->slow && read_slow(self, slow) < 0)
        goto done;
    entry = PyDict_GetItemWithError(entries, fingerprint);
    if (entry == NULL) {
        outcome = PyErr_Occurred() ? TIME_ERROR : TIME_COMPARATOR;
        goto done;
    }
    Py_INCREF(entry);
    double t = truth->finished - truth->started, g = target->finished - target->started;
    if (self->slow_enabled) {
        if (g >= t * self->ratio && g - t >= self->min_seconds) {
            outcome = TIME_COMPARATOR;  /* slow: an event to write */
            goto done;
        }
        executions = PyObject_GetAttr(entry, s_executions);
        if (executions == NULL)
            goto done;
        long long n = PyLong_AsLongLong(executions) + 1;
        if (n == 0 && PyErr_Occurred())
            goto done;
        if (n >= self->min_samples && (n - self->min_samples) % 16 == 0) {
            outcome = TIME_COMPARATOR;  /* a regression check is due */
            goto done;
        }
    }
    out->book = Py_NewRef(book);
    out->fingerprint = Py_NewRef(fingerprint);
    out->entry = Py_NewRef(entry);
    out->truth = t;
    out->target = g;
    outcome = TIME_RECORD;
done:
    Py_DECREF(fingerprint);
    Py_XDECREF(book);
    Py_XDECREF(entries);
    Py_XDECREF(slow);
    Py_XDECREF(entry);
    Py_XDECREF(executions);
    return outcome;
}

static int
record(Timing *t)
{
    PyObject *entries = PyObject_GetAttr(t->book, s_entries);
    if (entries == NULL)
        return -1;
    PyObject *moved = PyObject_CallMethodOneArg(entries, s_move_to_end, t->fingerprint);
    Py_DECREF(entries);
    if (moved == NULL)
        return -1;
    Py_DECREF(moved);
    PyObject *args[6] = {NULL};
    args[0] = PyObject_GetAttr(t->entry, s_truth);
    args[1] = args[0] ? PyObject_GetAttr(t->entry, s_target) : NULL;
    args[2] = args[1] ? PyObject_GetAttr(t->book, s_truth_all) : NULL;
    args[3] = args[2] ? PyObject_GetAttr(t->book, s_target_all) : NULL;
    args[4] = args[3] ? PyFloat_FromDouble(t->truth) : NULL;
    args[5] = args[4] ? PyFloat_FromDouble(t->target) : NULL;
    int ok = -1;
    if (args[5] != NULL) {
        PyObject *done = PyObject_Vectorcall(record_pair, args, 6, NULL);
        if (done != NULL) {
            Py_DECREF(done);
            ok = 0;
        }
    }
    for (int i = 0; i < 6; i++)
        Py_XDECREF(args[i]);
    if (ok < 0)
        return -1;
    PyObject *executions = PyObject_GetAttr(t->entry, s_executions);
    if (executions == NULL)
        return -1;
    PyObject *more = PyNumber_Add(executions, one);
    Py_DECREF(executions);
    if (more == NULL)
        return -1;
    ok = PyObject_SetAttr(t->entry, s_executions, more);
    Py_DECREF(more);
    return ok;
}

/* 1: settled; 0: for the comparator (nothing changed); -1: error. */
static int
settle(Lane *self, PyObject *a, PyObject *b)
{
    if (!PyObject_TypeCheck(a, base_result) || !PyObject_TypeCheck(b, base_result))
        return 0;
    Result *truth = (Result *)a, *target = (Result *)b;
    if (truth->context == internal)
        return 1;
    if (!self->quiet || truth->error != Py_None || target->error != Py_None)
        return 0;
    PyObject *settings = PyObject_GetAttr(self->monitor, s_settings);
    if (settings == NULL)
        return -1;
    int stale = settings != self->settings;
    if (stale && read_settings(self, settings) < 0) {
        Py_DECREF(settings);
        return -1;
    }
    Py_DECREF(settings);
    if (!self->plain_settings)
        return 0;
    PyObject *columns = truth->columns, *tag = truth->tag;
    if (columns != target->columns && !truth->columns_described) {
        int same = PyObject_RichCompareBool(columns, target->columns, Py_EQ);
        if (same < 0)
            return -1;
        if (!same) {  /* bytes that differ in table OIDs alone are equal columns */
            PyObject *problems = PyObject_CallFunctionObjArgs(column_problems, columns,
                                                              target->columns, NULL);
            if (problems == NULL)
                return -1;
            int any = PyObject_IsTrue(problems);
            Py_DECREF(problems);
            if (any != 0)
                return any < 0 ? -1 : 0;
        }
    }
    if (columns == Py_None && tag != target->tag) {
        int same = PyObject_RichCompareBool(tag, target->tag, Py_EQ);
        if (same <= 0)
            return same;
    }
    if (truth->rows != target->rows || truth->digest != target->digest)
        return 0;
    if (tag != Py_None && !(PyBytes_Check(tag) && PyBytes_GET_SIZE(tag) >= 6
                            && memcmp(PyBytes_AS_STRING(tag), "SELECT", 6) == 0)) {
        PyObject *volatile_ = PyObject_GetAttr(self->monitor, s_volatile);
        if (volatile_ == NULL)
            return -1;
        int watched = volatile_ != Py_None;
        Py_DECREF(volatile_);
        if (watched) {
            PyObject *taught = PyObject_CallOneArg(teaches, tag);
            if (taught == NULL)
                return -1;
            int teaching = PyObject_IsTrue(taught);
            Py_DECREF(taught);
            if (teaching != 0)
                return teaching < 0 ? -1 : 0;
        }
    }
    Timing timing = {NULL, NULL, NULL, 0, 0};
    int timed = TIME_NONE;
    if (TIMED_KIND(truth->kind) && self->timing && truth->timed && target->timed) {
        timed = timing_of(self, truth, target, &timing);
        if (timed == TIME_ERROR || timed == TIME_COMPARATOR)
            return timed == TIME_ERROR ? -1 : 0;
    }
    /* Decided: from here on, what the comparator would have done. */
    int ok = PyObject_SetAttr(self->comparator, s_last_tag, tag);
    PyObject *outcomes = ok == 0 ? PyObject_GetAttr(self->monitor, s_outcomes) : NULL;
    if (outcomes != NULL) {
        PyObject *matched = PyObject_GetItem(outcomes, s_matched);
        PyObject *more = matched ? PyNumber_Add(matched, one) : NULL;
        ok = more ? PyObject_SetItem(outcomes, s_matched, more) : -1;
        Py_XDECREF(matched);
        Py_XDECREF(more);
        Py_DECREF(outcomes);
    } else {
        ok = -1;
    }
    if (ok == 0 && timed == TIME_RECORD)
        ok = record(&timing);
    timing_clear(&timing);
    if (ok < 0)
        return -1;
    self->settled++;
    return 1;
}

static PyObject *
call_comparator(Lane *self, PyObject *name, PyObject *const *args, size_t nargs)
{
    PyObject *call[3] = {self->comparator, args[0], nargs > 1 ? args[1] : NULL};
    return PyObject_VectorcallMethod(name, call, nargs + 1, NULL);
}

static PyObject *
lane_statements_paired(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "statements_paired(truth, target)");
        return NULL;
    }
    int settled = settle(self, args[0], args[1]);
    if (settled < 0)
        return NULL;
    if (settled)
        Py_RETURN_NONE;
    return call_comparator(self, s_statements_paired, args, 2);
}

static PyObject *
lane_sync_paired(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sync_paired(truth, target)");
        return NULL;
    }
    PyObject *status = NULL;
    if (PyObject_TypeCheck(args[0], base_sync) && PyObject_TypeCheck(args[1], base_sync)) {
        status = ((Sync *)args[0])->status;
        PyObject *other = ((Sync *)args[1])->status;
        if (self->quiet && PyUnicode_Check(status) && PyUnicode_Check(other)
            && PyUnicode_Compare(status, self->status) == 0
            && PyUnicode_Compare(other, status) == 0) {
            self->settled++;
            Py_RETURN_NONE;  /* the comparator would change nothing */
        }
        Py_INCREF(status);
    } else {
        status = PyObject_GetAttrString(args[0], "status");
        if (status == NULL)
            return NULL;
    }
    PyObject *done = call_comparator(self, s_sync_paired, args, 2);
    if (done == NULL || refresh(self) < 0) {
        Py_DECREF(status);
        Py_XDECREF(done);
        return NULL;
    }
    Py_SETREF(self->status, status);
    return done;
}

static PyObject *
lane_statement_unpaired(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "statement_unpaired(result, side)");
        return NULL;
    }
    return call_comparator(self, s_statement_unpaired, args, 2);
}

static PyObject *
lane_truth_sync_alone(Lane *self, PyObject *arg)
{
    return call_comparator(self, s_truth_sync_alone, &arg, 1);
}

static PyObject *
lane_pairing_abandoned(Lane *self, PyObject *arg)
{
    return call_comparator(self, s_pairing_abandoned, &arg, 1);
}

static PyMethodDef lane_methods[] = {
    {"statements_paired", (PyCFunction)(void (*)(void))lane_statements_paired, METH_FASTCALL,
     "Settle a plainly equal pair, or pass it to the comparator."},
    {"sync_paired", (PyCFunction)(void (*)(void))lane_sync_paired, METH_FASTCALL,
     "Settle a sync point that changes nothing, or pass it to the comparator."},
    {"statement_unpaired", (PyCFunction)(void (*)(void))lane_statement_unpaired,
     METH_FASTCALL, "Passed to the comparator."},
    {"truth_sync_alone", (PyCFunction)lane_truth_sync_alone, METH_O, "Passed to the comparator."},
    {"pairing_abandoned", (PyCFunction)lane_pairing_abandoned, METH_O,
     "Passed to the comparator."},
    {NULL},
};

static PyMemberDef lane_members[] = {
    {"comparator", T_OBJECT, offsetof(Lane, comparator), READONLY, NULL},
    {"settled", T_PYSSIZET, offsetof(Lane, settled), READONLY,
     "pairs settled here, not by the comparator"},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "twinkly.compare._lane.MatchedLane",
    .tp_basicsize = sizeof(Lane),
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A session's plainly equal answers, settled without the comparator.",
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_methods = lane_methods,
    .tp_members = lane_members,
    .tp_init = (initproc)lane_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *
lane_setup(PyObject *module, PyObject *args)
{
    PyObject *i, *cache, *sh, *rp, *te, *cp;
    Py_ssize_t text;
    if (!PyArg_ParseTuple(args, "OO!nOOOO:setup", &i, &PyDict_Type, &cache, &text, &sh, &rp,
                          &te, &cp))
        return NULL;
    Py_XSETREF(column_problems, Py_NewRef(cp));
    Py_XSETREF(internal, Py_NewRef(i));
    Py_XSETREF(fingerprint_cache, Py_NewRef(cache));
    Py_XSETREF(shape, Py_NewRef(sh));
    Py_XSETREF(record_pair, Py_NewRef(rp));
    Py_XSETREF(teaches, Py_NewRef(te));
    cached_text = text;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"setup", lane_setup, METH_VARARGS,
     "setup(INTERNAL, fingerprint_cache, CACHED_TEXT, statement_shape, record_pair, teaches,"
     " column_problems)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "twinkly.compare._lane",
    "C implementation of twinkly.compare.lane.PythonMatchedLane.", -1, module_methods,
};

#define INTERN(var, text)                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return NULL;

PyMODINIT_FUNC
PyInit__lane(void)
{
    PyObject *tracker = PyImport_ImportModule("twinkly.tracking._tracker");
    if (tracker == NULL)
        return NULL;
    base_result = (PyTypeObject *)PyObject_GetAttrString(tracker, "Result");
    base_sync = (PyTypeObject *)PyObject_GetAttrString(tracker, "Sync");
    Py_DECREF(tracker);
    if (base_result == NULL || base_sync == NULL)
        return NULL;
    if (!PyType_Check(base_result) || !PyType_Check(base_sync)) {
        PyErr_SetString(PyExc_ImportError, "twinkly.tracking._tracker: no Result/Sync types");
        return NULL;
    }
    INTERN(s_statements_paired, "statements_paired");
    INTERN(s_sync_paired, "sync_paired");
    INTERN(s_statement_unpaired, "statement_unpaired");
    INTERN(s_truth_sync_alone, "truth_sync_alone");
    INTERN(s_pairing_abandoned, "pairing_abandoned");
    INTERN(s_verdicts, "_verdicts");
    INTERN(s_lost, "_target_lost_transaction");
    INTERN(s_last_tag, "_truth_last_tag");
    INTERN(s_monitor, "monitor");
    INTERN(s_settings, "settings");
    INTERN(s_exclude, "exclude_patterns");
    INTERN(s_sample_rate, "sample_rate");
    INTERN(s_timing, "timing");
    INTERN(s_volatile, "volatile");
    INTERN(s_latency, "latency");
    INTERN(s_entries, "entries");
    INTERN(s_move_to_end, "move_to_end");
    INTERN(s_executions, "executions");
    INTERN(s_truth, "truth");
    INTERN(s_target, "target");
    INTERN(s_truth_all, "truth_all");
    INTERN(s_target_all, "target_all");
    INTERN(s_enabled, "enabled");
    INTERN(s_ratio, "ratio");
    INTERN(s_min_seconds, "min_seconds");
    INTERN(s_min_samples, "min_samples");
    INTERN(s_outcomes, "outcomes");
    INTERN(s_matched, "matched");
    if ((one = PyLong_FromLong(1)) == NULL)
        return NULL;
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "MatchedLane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
