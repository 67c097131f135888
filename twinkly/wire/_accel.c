/* The per-message and per-row work of Twinkly's hot path, in C.
 *
 * Exactly the functions of twinkly/wire/accel.py's pure-Python implementation, with the
 * same arguments and results (tests/unit/wire/test_accel.py runs the same cases on both):
 *
 *   split(data, limit) -> (messages, pos, need)
 *   scan_rows(data, pos, limit, sample, room) -> (pos, rows, digest, room)
 *   bucket_of(seconds) -> int
 *   blank_literals(sql) -> str
 *
 * A row's digest is Python's own hash() of its bytes (_Py_HashBytes, what bytes.__hash__
 * returns), summed modulo 2**64, so results digested by either implementation compare.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

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

static PyObject *
accel_blank_literals(PyObject *self, PyObject *arg)
{
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "blank_literals: str expected");
        return NULL;
    }
    if (PyUnicode_READY(arg) < 0)
        return NULL;
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

static PyMethodDef methods[] = {
    {"split", accel_split, METH_VARARGS, "split(data, limit) -> (messages, pos, need)"},
    {"scan_rows", accel_scan_rows, METH_VARARGS,
     "scan_rows(data, pos, limit, sample, room) -> (pos, rows, digest, room)"},
    {"bucket_of", accel_bucket_of, METH_O, "bucket_of(seconds) -> int"},
    {"blank_literals", accel_blank_literals, METH_O, "blank_literals(sql) -> str"},
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
    return PyModule_Create(&module);
}
