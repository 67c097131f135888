/* PairerCore: the two common steps of twinkly.tracking.pairing's Pairer, in C.
 *
 * For every item the trackers emit, the pairer either pairs it at once with the other
 * side's oldest waiting item (the same key), or queues it while the other side has
 * nothing waiting. Those two steps, for the C tracker's items, are done here; anything
 * else (an abandoned pairer, a cap reached, keys that disagree, items of another
 * implementation) goes to the Python reference, untouched. CPairer (pairing.py) puts
 * this type in front of the reference, whose attributes it shares: _truth and _target
 * (deques), _observer, _max_held, abandoned, dropped, truth_done_end. */
#include "_tracker.h"

static PyObject *s_append, *s_popleft, *s_statements_paired, *s_sync_paired,
    *s_reference_truth, *s_reference_target;

typedef struct {
    PyObject_HEAD
    PyObject *truth, *target, *observer, *abandoned;
    Py_ssize_t max_held, dropped, truth_done_end;
} PairerCore;

static inline int
is_item(PyObject *o)
{
    return PyObject_TypeCheck(o, &ResultType) || PyObject_TypeCheck(o, &SyncType);
}

static inline long long
key_of(PyObject *o)
{
    return PyObject_TypeCheck(o, &SyncType) ? ((Sync *)o)->key : ((Result *)o)->key;
}

static inline Py_ssize_t
end_of(PyObject *o)
{
    return PyObject_TypeCheck(o, &SyncType) ? ((Sync *)o)->end : ((Result *)o)->end;
}

static PyObject *
observe(PairerCore *self, PyObject *truth, PyObject *target)
{
    PyObject *name = PyObject_TypeCheck(truth, &SyncType) ? s_sync_paired : s_statements_paired;
    PyObject *args[3] = {self->observer, truth, target};
    return PyObject_VectorcallMethod(name, args, 3, NULL);
}

/* 1: done here; 0: for the reference (nothing changed); -1: error. */
static int
add(PairerCore *self, PyObject *item, int from_truth)
{
    PyObject *mine = from_truth ? self->truth : self->target;
    PyObject *other = from_truth ? self->target : self->truth;
    if (mine == NULL || other == NULL || self->observer == NULL || self->abandoned != Py_None
        || !is_item(item))
        return 0;
    Py_ssize_t waiting = PyObject_Size(mine), across = PyObject_Size(other);
    if (waiting < 0 || across < 0)
        return -1;
    if (across == 0) {
        if (waiting + 1 > self->max_held)
            return 0;  /* the reference abandons */
        PyObject *done = PyObject_CallMethodOneArg(mine, s_append, item);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
        return 1;
    }
    if (waiting != 0)
        return 0;  /* the reference drains */
    PyObject *head = PySequence_GetItem(other, 0);
    if (head == NULL)
        return -1;
    int pairs = is_item(head) && key_of(head) == key_of(item);
    Py_DECREF(head);
    if (!pairs)
        return 0;
    PyObject *partner = PyObject_CallMethodNoArgs(other, s_popleft);
    if (partner == NULL)
        return -1;
    PyObject *truth = from_truth ? item : partner, *target = from_truth ? partner : item;
    self->truth_done_end = end_of(truth);
    PyObject *done = observe(self, truth, target);
    Py_DECREF(partner);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return 1;
}

static PyObject *
add_side(PairerCore *self, PyObject *item, int from_truth)
{
    int done = add(self, item, from_truth);
    if (done < 0)
        return NULL;
    if (done)
        Py_RETURN_NONE;
    PyObject *name = from_truth ? s_reference_truth : s_reference_target;
    return PyObject_CallMethodOneArg((PyObject *)self, name, item);
}

static PyObject *
core_add_truth(PairerCore *self, PyObject *item)
{
    return add_side(self, item, 1);
}

static PyObject *
core_add_target(PairerCore *self, PyObject *item)
{
    return add_side(self, item, 0);
}

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PairerCore *self = (PairerCore *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->abandoned = Py_NewRef(Py_None);
        self->max_held = PY_SSIZE_T_MAX;
    }
    return (PyObject *)self;
}

static int
core_traverse(PairerCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->truth);
    Py_VISIT(self->target);
    Py_VISIT(self->observer);
    Py_VISIT(self->abandoned);
    return 0;
}

static int
core_clear(PairerCore *self)
{
    Py_CLEAR(self->truth);
    Py_CLEAR(self->target);
    Py_CLEAR(self->observer);
    Py_CLEAR(self->abandoned);
    return 0;
}

static void
core_dealloc(PairerCore *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef core_methods[] = {
    {"add_truth", (PyCFunction)core_add_truth, METH_O, "The truth's next item."},
    {"add_target", (PyCFunction)core_add_target, METH_O, "The target's next item."},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"_truth", T_OBJECT, offsetof(PairerCore, truth), 0, NULL},
    {"_target", T_OBJECT, offsetof(PairerCore, target), 0, NULL},
    {"_observer", T_OBJECT, offsetof(PairerCore, observer), 0, NULL},
    {"abandoned", T_OBJECT, offsetof(PairerCore, abandoned), 0, NULL},
    {"_max_held", T_PYSSIZET, offsetof(PairerCore, max_held), 0, NULL},
    {"dropped", T_PYSSIZET, offsetof(PairerCore, dropped), 0, NULL},
    {"truth_done_end", T_PYSSIZET, offsetof(PairerCore, truth_done_end), 0, NULL},
    {NULL},
};

PyTypeObject PairerCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "twinkly.tracking._tracker.PairerCore",
    .tp_basicsize = sizeof(PairerCore),
    .tp_dealloc = (destructor)core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The pairer's two common steps in C (see twinkly/tracking/pairing.py).",
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_new = core_new,
};

int
pairer_ready(void)
{
    s_append = PyUnicode_InternFromString("append");
    s_popleft = PyUnicode_InternFromString("popleft");
    s_statements_paired = PyUnicode_InternFromString("statements_paired");
    s_sync_paired = PyUnicode_InternFromString("sync_paired");
    s_reference_truth = PyUnicode_InternFromString("_reference_add_truth");
    s_reference_target = PyUnicode_InternFromString("_reference_add_target");
    if (s_append == NULL || s_popleft == NULL || s_statements_paired == NULL
        || s_sync_paired == NULL || s_reference_truth == NULL || s_reference_target == NULL)
        return -1;
    return PyType_Ready(&PairerCoreType);
}
