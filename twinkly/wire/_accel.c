/* The per-message and per-row work of Twinkly's hot path, in C.
 *
 * Exactly the functions of twinkly/wire/accel.py's pure-Python implementation, with the
 * same arguments and results (tests/unit/wire/test_accel.py runs the same cases on both):
 *
 *   split(data, limit) -> (messages, pos, need)
 *   scan_rows(data, pos, limit, sample, room) -> (pos, rows, digest, room)
 *   bucket_of(seconds) -> int
 *   blank_literals(sql) -> str
 *   statement_shape(sql) -> str
 *   Histogram(): add(index, seconds), record(seconds), quantile(q), buckets, count,
 *       total, max
 *   record_pair(truth_fp, target_fp, truth_all, target_all, truth, target)
 *
 * A row's digest is Python's own hash() of its bytes (_Py_HashBytes, what bytes.__hash__
 * returns), summed modulo 2**64, so results digested by either implementation compare.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t
read_len(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* split(data, limit): every complete message of ``data`` as (type, payload); pos is where
 * the first incomplete message starts, need the bytes that message needs (5 while even
 * its header is incomplete), or -1 when the message at pos has an invalid length. */
static PyObject *
accel_split(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "y*n:split", &view, &limit))
        return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t size = view.len, pos = 0, need = 5;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto error;
    while (size - pos >= 5) {
        Py_ssize_t length = (Py_ssize_t)read_len(data + pos + 1);
        if (length < 4 || length > limit) {
            need = -1;
            break;
        }
        Py_ssize_t end = pos + 1 + length;
        if (end > size) {
            need = end - pos;
            break;
        }
        PyObject *type = PyLong_FromLong(data[pos]);  /* small ints are cached */
        PyObject *payload = PyBytes_FromStringAndSize((const char *)data + pos + 5, length - 4);
        PyObject *item = type && payload ? PyTuple_Pack(2, type, payload) : NULL;
        Py_XDECREF(type);
        Py_XDECREF(payload);
        if (item == NULL)
            goto error;
        int failed = PyList_Append(out, item);
        Py_DECREF(item);
        if (failed)
            goto error;
        pos = end;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nnn)", out, pos, need);
error:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

/* scan_rows(data, pos, limit, sample, room): count and digest the complete DataRow ('D')
 * and CopyData ('d') messages from pos on, stopping at any other message, an incomplete
 * one or an invalid length (left for the caller to report). While room > 0 each row's
 * bytes are appended to ``sample`` and room goes down; a row arriving at room == 0 turns
 * room into -1 (the caller then drops its sample); room < 0 keeps nothing. */
static PyObject *
accel_scan_rows(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, limit, room;
    PyObject *sample;
    if (!PyArg_ParseTuple(args, "y*nnOn:scan_rows", &view, &pos, &limit, &sample, &room))
        return NULL;
    if (room > 0 && !PyList_Check(sample)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "scan_rows: sample must be a list while room > 0");
        return NULL;
    }
    const unsigned char *data = view.buf;
    Py_ssize_t size = view.len, rows = 0;
    uint64_t digest = 0;
    if (pos < 0)
        pos = 0;
    while (size - pos >= 5) {
        unsigned char type = data[pos];
        if (type != 'D' && type != 'd')
            break;
        Py_ssize_t length = (Py_ssize_t)read_len(data + pos + 1);
        if (length < 4 || length > limit)
            break;
        Py_ssize_t end = pos + 1 + length;
        if (end > size)
            break;
        const char *row = (const char *)data + pos + 5;
        Py_ssize_t row_len = length - 4;
        if (room > 0) {
            PyObject *copy = PyBytes_FromStringAndSize(row, row_len);
            if (copy == NULL)
                goto error;
            Py_hash_t h = PyObject_Hash(copy);
            int failed = h == -1 || PyList_Append(sample, copy);
            Py_DECREF(copy);
            if (failed)
                goto error;
            digest += (uint64_t)h;
            room--;
        } else {
            if (room == 0)
                room = -1;
            digest += (uint64_t)_Py_HashBytes(row, row_len);
        }
        rows++;
        pos = end;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nnKn)", pos, rows, (unsigned long long)digest, room);
error:
    PyBuffer_Release(&view);
    return NULL;
}

/* bucket_of(seconds): int(math.log(seconds / 1e-6) * (8 / math.log(2))), 0 up to 1 us. */
static double scale;

static PyObject *
accel_bucket_of(PyObject *self, PyObject *arg)
{
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred())
        return NULL;
    double micros = seconds / 1e-6;
    if (!(micros > 1.0))
        return PyLong_FromLong(0);
    return PyLong_FromDouble(log(micros) * scale);  /* truncates, as int() does */
}

/* blank_literals(sql): re.sub(r"'[^']*'|\b\d+\b", "0", sql), with re's Unicode meaning
 * of \b (word characters: alphanumerics and '_') and \d (decimal digits). */
static inline int
is_word(Py_UCS4 ch)
{
    return ch == '_' || Py_UNICODE_ISALNUM(ch);
}

/* blank_literals of an ASCII text (SQL nearly always is), byte by byte: the same rules
 * as the general loop below, where every character is one byte. */
static inline int
ascii_word(char ch)
{
    return ch == '_' || (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z')
           || (ch >= 'A' && ch <= 'Z');
}

static PyObject *
blank_ascii(const char *src, Py_ssize_t n)
{
    char *out = PyMem_Malloc(n ? n : 1);
    if (out == NULL)
        return PyErr_NoMemory();
    Py_ssize_t i = 0, o = 0;
    while (i < n) {
        char ch = src[i];
        if (ch == '\'') {
            const char *close = memchr(src + i + 1, '\'', n - i - 1);
            if (close != NULL) {
                out[o++] = '0';
                i = close - src + 1;
                continue;
            }
        } else if (ch >= '0' && ch <= '9' && (i == 0 || !ascii_word(src[i - 1]))) {
            Py_ssize_t k = i + 1;
            while (k < n && src[k] >= '0' && src[k] <= '9')
                k++;
            if (k == n || !ascii_word(src[k])) {
                out[o++] = '0';
                i = k;
                continue;
            }
        }
        out[o++] = ch;
        i++;
    }
    PyObject *result = PyUnicode_New(o, 127);
    if (result != NULL)
        memcpy(PyUnicode_DATA(result), out, o);
    PyMem_Free(out);
    return result;
}

/* A str argument, ready to read: 0, or -1 with TypeError set. */
static int
text_argument(PyObject *arg, const char *function)
{
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s: str expected", function);
        return -1;
    }
    return PyUnicode_READY(arg);
}

static PyObject *
accel_blank_literals(PyObject *self, PyObject *arg)
{
    if (text_argument(arg, "blank_literals") < 0)
        return NULL;
    if (PyUnicode_IS_ASCII(arg))
        return blank_ascii((const char *)PyUnicode_DATA(arg), PyUnicode_GET_LENGTH(arg));
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    int kind = PyUnicode_KIND(arg);
    const void *src = PyUnicode_DATA(arg);
    Py_UCS4 *out = PyMem_Malloc(sizeof(Py_UCS4) * (n ? n : 1));
    if (out == NULL)
        return PyErr_NoMemory();
    Py_ssize_t i = 0, o = 0;
    while (i < n) {
        Py_UCS4 ch = PyUnicode_READ(kind, src, i);
        if (ch == '\'') {
            Py_ssize_t j = i + 1;
            while (j < n && PyUnicode_READ(kind, src, j) != '\'')
                j++;
            if (j < n) {
                out[o++] = '0';
                i = j + 1;
                continue;
            }
        } else if (Py_UNICODE_ISDECIMAL(ch) && (i == 0 || !is_word(PyUnicode_READ(kind, src, i - 1)))) {
            Py_ssize_t k = i + 1;
            while (k < n && Py_UNICODE_ISDECIMAL(PyUnicode_READ(kind, src, k)))
                k++;
            if (k == n || !is_word(PyUnicode_READ(kind, src, k))) {
                out[o++] = '0';
                i = k;
                continue;
            }
        }
        out[o++] = ch;
        i++;
    }
    PyObject *result = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out, o);
    PyMem_Free(out);
    return result;
}


/* statement_shape(sql): sql itself when it holds a character that might not start a
 * literal (", $, \, -- or slash-star), else blank_literals(sql): the fingerprint
 * cache's key. */
static PyObject *
accel_statement_shape(PyObject *self, PyObject *arg)
{
    if (text_argument(arg, "statement_shape") < 0)
        return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    int kind = PyUnicode_KIND(arg);
    const void *src = PyUnicode_DATA(arg);
    Py_UCS4 previous = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, src, i);
        if (ch == '"' || ch == '$' || ch == '\\' || (ch == '-' && previous == '-')
            || (ch == '*' && previous == '/')) {
            Py_INCREF(arg);
            return arg;
        }
        previous = ch;
    }
    return accel_blank_literals(self, arg);
}

/* Histogram: the counts of a latency histogram's buckets (bucket_of's indexes), kept
 * dense over the range of indexes seen, which timings keep narrow. */
#define MAX_BUCKETS 4096

typedef struct {
    PyObject_HEAD
    uint64_t *counts;
    Py_ssize_t low, size;  /* counts[i] is bucket low + i */
    long long count;
    double total, max;
} Histogram;

static PyTypeObject HistogramType;

static void
histogram_dealloc(Histogram *self)
{
    PyMem_Free(self->counts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Make room for bucket ``index``; -1 with an exception set on failure. */
static int
histogram_cover(Histogram *h, Py_ssize_t index)
{
    if (index < 0 || index >= MAX_BUCKETS) {
        PyErr_Format(PyExc_ValueError, "bucket index %zd out of range", index);
        return -1;
    }
    if (h->size && index >= h->low && index < h->low + h->size)
        return 0;
    Py_ssize_t low = h->size ? (index < h->low ? index : h->low) : index;
    Py_ssize_t high = h->size ? (index >= h->low + h->size ? index + 1 : h->low + h->size)
                              : index + 1;
    uint64_t *counts = PyMem_Calloc((size_t)(high - low), sizeof(uint64_t));
    if (counts == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (h->size)
        memcpy(counts + (h->low - low), h->counts, (size_t)h->size * sizeof(uint64_t));
    PyMem_Free(h->counts);
    h->counts = counts;
    h->low = low;
    h->size = high - low;
    return 0;
}

static inline int
histogram_add_one(Histogram *h, Py_ssize_t index, double seconds)
{
    if (histogram_cover(h, index) < 0)
        return -1;
    h->counts[index - h->low]++;
    h->count++;
    h->total += seconds;
    if (seconds > h->max)
        h->max = seconds;
    return 0;
}

static inline Py_ssize_t
bucket_index(double seconds)
{
    double micros = seconds / 1e-6;
    if (!(micros > 1.0))
        return 0;
    double index = log(micros) * scale;
    return index < MAX_BUCKETS ? (Py_ssize_t)index : MAX_BUCKETS;  /* too large: refused */
}

static PyObject *
histogram_add(Histogram *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(index, seconds)");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[0]);
    double seconds = PyFloat_AsDouble(args[1]);
    if (PyErr_Occurred() || histogram_add_one(self, index, seconds) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
histogram_record(Histogram *self, PyObject *arg)
{
    double seconds = PyFloat_AsDouble(arg);
    if ((seconds == -1.0 && PyErr_Occurred())
        || histogram_add_one(self, bucket_index(seconds), seconds) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
histogram_quantile(Histogram *self, PyObject *arg)
{
    double q = PyFloat_AsDouble(arg);
    if (q == -1.0 && PyErr_Occurred())
        return NULL;
    if (!self->count)
        Py_RETURN_NONE;
    if (q >= 1.0)
        return PyFloat_FromDouble(self->max);
    double rank = q * (double)self->count;
    uint64_t seen = 0;
    for (Py_ssize_t i = 0; i < self->size; i++) {
        if (!self->counts[i])
            continue;
        seen += self->counts[i];
        if ((double)seen >= rank) {
            double middle = exp(((double)(self->low + i) + 0.5) / scale) * 1e-6;
            return PyFloat_FromDouble(middle < self->max ? middle : self->max);
        }
    }
    return PyFloat_FromDouble(self->max);
}

static PyObject *
histogram_buckets(Histogram *self, void *closure)
{
    PyObject *out = PyDict_New();
    for (Py_ssize_t i = 0; out != NULL && i < self->size; i++) {
        if (!self->counts[i])
            continue;
        PyObject *key = PyLong_FromSsize_t(self->low + i);
        PyObject *value = PyLong_FromUnsignedLongLong(self->counts[i]);
        if (key == NULL || value == NULL || PyDict_SetItem(out, key, value) < 0)
            Py_CLEAR(out);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    return out;
}

static PyObject *
histogram_count(Histogram *self, void *closure)
{
    return PyLong_FromLongLong(self->count);
}

static PyObject *
histogram_total(Histogram *self, void *closure)
{
    return PyFloat_FromDouble(self->total);
}

static PyObject *
histogram_max(Histogram *self, void *closure)
{
    return PyFloat_FromDouble(self->max);
}

static PyMethodDef histogram_methods[] = {
    {"add", (PyCFunction)(void (*)(void))histogram_add, METH_FASTCALL,
     "add(index, seconds): record a timing whose bucket is known"},
    {"record", (PyCFunction)histogram_record, METH_O, "record(seconds)"},
    {"quantile", (PyCFunction)histogram_quantile, METH_O, "quantile(q) -> seconds or None"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef histogram_getset[] = {
    {"buckets", (getter)histogram_buckets, NULL, "{index: count}, a new dict", NULL},
    {"count", (getter)histogram_count, NULL, "timings recorded", NULL},
    {"total", (getter)histogram_total, NULL, "their sum, in seconds", NULL},
    {"max", (getter)histogram_max, NULL, "the largest, in seconds (0.0 when empty)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HistogramType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "twinkly.wire._accel.Histogram",
    .tp_basicsize = sizeof(Histogram),
    .tp_dealloc = (destructor)histogram_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Counts of timings in logarithmic buckets (see bucket_of).",
    .tp_methods = histogram_methods,
    .tp_getset = histogram_getset,
    .tp_new = PyType_GenericNew,
};

/* record_pair(truth_fp, target_fp, truth_all, target_all, truth, target): one
 * execution's two timings into its fingerprint's histograms and the totals. */
static PyObject *
accel_record_pair(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "record_pair takes 6 arguments");
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        if (!PyObject_TypeCheck(args[i], &HistogramType)) {
            PyErr_SetString(PyExc_TypeError, "record_pair: Histogram expected");
            return NULL;
        }
    }
    double truth = PyFloat_AsDouble(args[4]), target = PyFloat_AsDouble(args[5]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t a = bucket_index(truth), b = bucket_index(target);
    if (histogram_add_one((Histogram *)args[0], a, truth) < 0
        || histogram_add_one((Histogram *)args[1], b, target) < 0
        || histogram_add_one((Histogram *)args[2], a, truth) < 0
        || histogram_add_one((Histogram *)args[3], b, target) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"split", accel_split, METH_VARARGS, "split(data, limit) -> (messages, pos, need)"},
    {"scan_rows", accel_scan_rows, METH_VARARGS,
     "scan_rows(data, pos, limit, sample, room) -> (pos, rows, digest, room)"},
    {"bucket_of", accel_bucket_of, METH_O, "bucket_of(seconds) -> int"},
    {"blank_literals", accel_blank_literals, METH_O, "blank_literals(sql) -> str"},
    {"statement_shape", accel_statement_shape, METH_O, "statement_shape(sql) -> str"},
    {"record_pair", (PyCFunction)(void (*)(void))accel_record_pair, METH_FASTCALL,
     "record_pair(truth_fp, target_fp, truth_all, target_all, truth, target)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "twinkly.wire._accel",
    "C implementation of twinkly.wire.accel (framing, row digests, histogram buckets).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    scale = 8.0 / log(2.0);
    if (PyType_Ready(&HistogramType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HistogramType);
    if (PyModule_AddObject(m, "Histogram", (PyObject *)&HistogramType) < 0) {
        Py_DECREF(&HistogramType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
