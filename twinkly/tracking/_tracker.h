/* What the three parts of the C response tracker share (see _tracker.c). */
#ifndef TWINKLY_TRACKER_H
#define TWINKLY_TRACKER_H
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
extern const char *kind_names[K_COUNT];
extern PyObject *kind_strs[K_COUNT];

#define ENDS_WITH_READY(k) ((k) == K_QUERY || (k) == K_SYNC || (k) == K_FUNCTION_CALL)
#define EXECUTING(k) ((k) == K_EXECUTE || (k) == K_QUERY || (k) == K_FUNCTION_CALL)

extern PyTypeObject *result_type, *sync_type;  /* the registered subclasses */
extern PyTypeObject ResultType, SyncType, TrackerType;

static inline uint32_t
read_len(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

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

typedef struct {
    PyObject_HEAD
    PyObject *status;
    double time;
    long long key;
    Py_ssize_t end;
} Sync;

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

/* _tracker_results.c */
Result *result_make(PyTypeObject *type, int kind, PyObject *request, double started,
                    long long key, PyObject *context);
PyObject *sync_make(PyTypeObject *type, PyObject *status, double time, long long key,
                    Py_ssize_t end);
int kind_of(PyObject *name);

/* _tracker_machine.c */
int owed_append(Tracker *t, int kind, double sent, long long seq, PyObject *context);
void owed_clear(Tracker *t);
int call_clock(Tracker *t, double *now);
int handle_message(Tracker *t, int type, const char *p, Py_ssize_t n, PyObject *payload);
Py_ssize_t sample_room(Tracker *t, Result *r);
int scan_rows(Tracker *t, Result *r, const unsigned char *data, Py_ssize_t size,
              Py_ssize_t *pos, Py_ssize_t limit, Py_ssize_t *room, Py_ssize_t *rows,
              uint64_t *digest);

/* _tracker.c */
int expect_kind(Tracker *t, int kind, double now, long long seq, PyObject *context);

/* _owing.c */
PyObject *module_owe(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *module_setup_owing(PyObject *module, PyObject *arg);
int owing_ready(void);

/* _pairer.c */
extern PyTypeObject PairerCoreType;
int pairer_ready(void);

#endif
