/* The socket end of the hot path: twinkly/proxy/sockets.py's python_dispatch and
 * python_writer, in C, case for case.
 *
 * dispatch(events): one epoll poll's events.
 * One epoll poll's events: a plain read event of a connected tcp.Server/tcp.Client is
 * read here (recv on the event's descriptor, what Connection.doRead does) and its bytes
 * given to the protocol's dataReceived (through an endpoint's _WrappingProtocol, which
 * only forwards them); every other event goes to the reactor's _doReadOrWrite. End of
 * stream, a socket error or an exception from the protocol disconnects as
 * _doReadOrWrite does. What it calls in Python is given once by setup().
 *
 * Writer(connection, buffered_write): a write function that sends at once when nothing
 * is queued ahead, and gives what the kernel did not take to Twisted's own write. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/socket.h>

static PyObject *plain_types, *wrapping_type, *log_error, *connection_lost,
    *connection_done;
static PyObject *s_connected, *s_protocol, *s_data_received, *s_wrapped, *s_buffer_size,
    *s_temp_buffer, *s_data_buffer, *s_tls, *s_disconnecting, *s_socket;

/* The exception being raised, normalised, with its traceback; the error indicator is
 * cleared (PyErr_GetRaisedException from 3.12 on). */
static PyObject *
raised(void)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value ? value : Py_NewRef(Py_None);
}

/* The selectable's protocol's dataReceived, with any endpoint wrapper skipped. */
static PyObject *
receiver(PyObject *selectable)
{
    PyObject *protocol = PyObject_GetAttr(selectable, s_protocol);
    if (protocol == NULL)
        return NULL;
    if ((PyObject *)Py_TYPE(protocol) == wrapping_type) {
        PyObject *wrapped = PyObject_GetAttr(protocol, s_wrapped);
        Py_DECREF(protocol);
        if (wrapped == NULL)
            return NULL;
        protocol = wrapped;
    }
    PyObject *method = PyObject_GetAttr(protocol, s_data_received);
    Py_DECREF(protocol);
    return method;
}

/* Log the exception being raised, then disconnect with ``reason`` (NULL: the
 * exception itself). 0, or -1 when logging or disconnecting failed. */
static int
failed(PyObject *selectable, PyObject *disconnect, PyObject *reason)
{
    PyObject *error = raised();
    PyObject *logged = PyObject_CallFunctionObjArgs(log_error, selectable, error, NULL);
    if (logged == NULL) {
        Py_DECREF(error);
        return -1;
    }
    Py_DECREF(logged);
    PyObject *done = PyObject_CallFunctionObjArgs(disconnect, selectable,
                                                  reason ? reason : error, Py_False, NULL);
    Py_DECREF(error);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return 0;
}

/* Connection.doRead, and what _doReadOrWrite does with its outcome. */
static int
read_event(PyObject *selectable, int fd, PyObject *disconnect)
{
    PyObject *size_obj = PyObject_GetAttr(selectable, s_buffer_size);
    if (size_obj == NULL)
        return -1;
    Py_ssize_t size = PyLong_AsSsize_t(size_obj);
    Py_DECREF(size_obj);
    if (size <= 0)
        return size < 0 && PyErr_Occurred() ? -1 : 0;
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL)
        return -1;
    /* non-blocking: the GIL is kept */
    ssize_t got = recv(fd, PyBytes_AS_STRING(data), (size_t)size, 0);
    int error = errno;
    if (got <= 0) {
        Py_DECREF(data);
        if (got < 0 && (error == EAGAIN || error == EWOULDBLOCK || error == EINTR))
            return 0;
        /* an error: CONNECTION_LOST; end of stream: CONNECTION_DONE, a half-close if
         * the protocol takes one */
        PyObject *done = PyObject_CallFunctionObjArgs(
            disconnect, selectable, got < 0 ? connection_lost : connection_done,
            got < 0 ? Py_False : Py_True, NULL);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
        return 0;
    }
    if (got < size && _PyBytes_Resize(&data, got) < 0)
        return -1;
    PyObject *method = receiver(selectable);
    PyObject *done = method ? PyObject_CallOneArg(method, data) : NULL;
    Py_XDECREF(method);
    Py_DECREF(data);
    if (done != NULL) {
        Py_DECREF(done);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    return failed(selectable, disconnect, NULL);
}

static PyObject *
dispatch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "dispatch(events, selectables, handle, disconnect)");
        return NULL;
    }
    PyObject *events = args[0], *selectables = args[1], *handle = args[2],
             *disconnect = args[3];
    if (!PyList_Check(events) || !PyDict_Check(selectables)) {
        PyErr_SetString(PyExc_TypeError, "dispatch: a list of events and a dict expected");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
        PyObject *pair = PyList_GET_ITEM(events, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "dispatch: (fd, event) pairs expected");
            return NULL;
        }
        PyObject *fd_obj = PyTuple_GET_ITEM(pair, 0), *event_obj = PyTuple_GET_ITEM(pair, 1);
        PyObject *selectable = PyDict_GetItemWithError(selectables, fd_obj);
        if (selectable == NULL) {
            if (PyErr_Occurred())
                return NULL;
            continue;  /* removed by an earlier event of this poll */
        }
        Py_INCREF(selectable);
        long event = PyLong_AsLong(event_obj);
        int fd = (int)PyLong_AsLong(fd_obj);
        int outcome = 0;
        if (PyErr_Occurred()) {
            outcome = -1;
        } else {
            int plain = event == EPOLLIN
                        && PySequence_Contains(plain_types, (PyObject *)Py_TYPE(selectable)) == 1;
            int connected = 0;
            if (plain) {
                PyObject *flag = PyObject_GetAttr(selectable, s_connected);
                connected = flag ? PyObject_IsTrue(flag) : -1;
                Py_XDECREF(flag);
            }
            if (connected < 0) {
                outcome = -1;
            } else if (connected) {
                outcome = read_event(selectable, fd, disconnect);
            } else {
                PyObject *done = PyObject_CallFunctionObjArgs(handle, selectable, fd_obj,
                                                              event_obj, NULL);
                Py_XDECREF(done);
                outcome = done ? 0 : -1;
            }
        }
        if (outcome < 0 && !PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
            /* as the Python loop: log what escaped, go on with the next event */
            PyObject *error = raised();
            PyObject *logged = PyObject_CallFunctionObjArgs(log_error, selectable, error, NULL);
            Py_DECREF(error);
            if (logged == NULL) {
                Py_DECREF(selectable);
                return NULL;
            }
            Py_DECREF(logged);
            outcome = 0;
        }
        Py_DECREF(selectable);
        if (outcome < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* ---- Writer --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *connection, *buffered_write;
} Writer;

/* Whether anything stands between these bytes and the socket: bytes queued by Twisted,
 * TLS, a closing or closed connection. -1: error. */
static int
must_buffer(PyObject *connection)
{
    static PyObject **empty_if_free[] = {&s_temp_buffer, &s_data_buffer, &s_tls,
                                         &s_disconnecting};
    for (int i = 0; i < 4; i++) {
        PyObject *value = PyObject_GetAttr(connection, *empty_if_free[i]);
        int set = value ? PyObject_IsTrue(value) : -1;
        Py_XDECREF(value);
        if (set != 0)
            return set;
    }
    PyObject *connected = PyObject_GetAttr(connection, s_connected);
    int yes = connected ? PyObject_IsTrue(connected) : -1;
    Py_XDECREF(connected);
    return yes < 0 ? -1 : !yes;
}

static PyObject *
writer_call(Writer *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "write(data)");
        return NULL;
    }
    PyObject *data = args[0];
    int buffer = must_buffer(self->connection);
    if (buffer < 0)
        return NULL;
    Py_ssize_t sent = 0;
    if (!buffer) {
        PyObject *sock = PyObject_GetAttr(self->connection, s_socket);
        int fd = sock ? PyObject_AsFileDescriptor(sock) : -1;
        Py_XDECREF(sock);
        if (fd < 0) {
            /* a closed socket: Twisted's write sees and reports it its own way */
            PyErr_Clear();
        } else {
            Py_buffer view;
            if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
                return NULL;
            ssize_t n = send(fd, view.buf, (size_t)view.len, MSG_NOSIGNAL);
            Py_ssize_t total = view.len;
            PyBuffer_Release(&view);
            if (n >= total)
                Py_RETURN_NONE;
            sent = n > 0 ? n : 0;  /* EAGAIN, EINTR or an error: Twisted's write */
        }
    }
    PyObject *rest = sent ? PySequence_GetSlice(data, sent, PY_SSIZE_T_MAX) : Py_NewRef(data);
    if (rest == NULL)
        return NULL;
    PyObject *done = PyObject_CallOneArg(self->buffered_write, rest);
    Py_DECREF(rest);
    return done;
}

static PyObject *writer_vectorcall(PyObject *, PyObject *const *, size_t, PyObject *);

static PyObject *
writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *connection, *buffered_write;
    if (!PyArg_ParseTuple(args, "OO:Writer", &connection, &buffered_write))
        return NULL;
    Writer *self = (Writer *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = writer_vectorcall;
    self->connection = Py_NewRef(connection);
    self->buffered_write = Py_NewRef(buffered_write);
    return (PyObject *)self;
}

static PyObject *
writer_vectorcall_entry(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return PyVectorcall_Call(self, args, kwargs);
}

static PyObject *
writer_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return writer_call((Writer *)callable, args, nargsf, kwnames);
}

static int
writer_traverse(Writer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->connection);
    Py_VISIT(self->buffered_write);
    return 0;
}

static int
writer_clear(Writer *self)
{
    Py_CLEAR(self->connection);
    Py_CLEAR(self->buffered_write);
    return 0;
}

static void
writer_dealloc(Writer *self)
{
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "twinkly.proxy._dispatch.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_vectorcall_offset = offsetof(Writer, vectorcall),
    .tp_call = writer_vectorcall_entry,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Writer(connection, buffered_write): sends at once when nothing is queued.",
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
    .tp_new = writer_new,
};

static PyObject *
setup(PyObject *module, PyObject *args)
{
    PyObject *plain, *wrapping, *log, *lost, *done;
    if (!PyArg_ParseTuple(args, "O!OOOO:setup", &PyTuple_Type, &plain, &wrapping, &log, &lost,
                          &done))
        return NULL;
    Py_XSETREF(plain_types, Py_NewRef(plain));
    Py_XSETREF(wrapping_type, Py_NewRef(wrapping));
    Py_XSETREF(log_error, Py_NewRef(log));
    Py_XSETREF(connection_lost, Py_NewRef(lost));
    Py_XSETREF(connection_done, Py_NewRef(done));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"dispatch", (PyCFunction)(void (*)(void))dispatch, METH_FASTCALL,
     "dispatch(events, selectables, handle, disconnect): one poll's events"},
    {"setup", setup, METH_VARARGS,
     "setup(plain_types, wrapping_type, log_error, CONNECTION_LOST, CONNECTION_DONE)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "twinkly.proxy._dispatch",
    "C implementation of twinkly.proxy.sockets.python_dispatch and python_writer.", -1, methods,
};

PyMODINIT_FUNC
PyInit__dispatch(void)
{
    s_connected = PyUnicode_InternFromString("connected");
    s_protocol = PyUnicode_InternFromString("protocol");
    s_data_received = PyUnicode_InternFromString("dataReceived");
    s_wrapped = PyUnicode_InternFromString("_wrappedProtocol");
    s_buffer_size = PyUnicode_InternFromString("bufferSize");
    s_temp_buffer = PyUnicode_InternFromString("_tempDataBuffer");
    s_data_buffer = PyUnicode_InternFromString("dataBuffer");
    s_tls = PyUnicode_InternFromString("TLS");
    s_disconnecting = PyUnicode_InternFromString("disconnecting");
    s_socket = PyUnicode_InternFromString("socket");
    if (s_connected == NULL || s_protocol == NULL || s_data_received == NULL
        || s_wrapped == NULL || s_buffer_size == NULL || s_temp_buffer == NULL
        || s_data_buffer == NULL || s_tls == NULL || s_disconnecting == NULL || s_socket == NULL)
        return NULL;
    if (PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
