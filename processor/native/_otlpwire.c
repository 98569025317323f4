/* Small wire-level helpers the hop core uses on every request (counting without parsing). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "wire.h"

/* Count the field-`child` entries inside every field-`outer` message of buf (two nesting levels below a
 * field-1 list): spans in a traces request are 1 > 2 > 2. Returns -1 when malformed. */
static Py_ssize_t count_level(const uint8_t *p, size_t len, int depth) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    Py_ssize_t n = 0;
    int want = depth == 0 ? 1 : 2;
    while ((r = wire_next(&c, &f)) == 1) {
        if ((int)f.number != want) continue;
        if (f.wtype != 2) return -1;
        if (depth == 2) {
            n++;
        } else {
            Py_ssize_t inner = count_level(f.data, f.len, depth + 1);
            if (inner < 0) return -1;
            n += inner;
        }
    }
    return r < 0 ? -1 : n;
}

static PyObject *count_spans(PyObject *self, PyObject *args) {
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    Py_ssize_t n = count_level(buf.buf, (size_t)buf.len, 0);
    PyBuffer_Release(&buf);
    if (n < 0) Py_RETURN_NONE;
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"count_spans", count_spans, METH_VARARGS,
     "Spans in a serialized ExportTraceServiceRequest (also log records in a logs request), None if malformed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_otlpwire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__otlpwire(void) { return PyModule_Create(&module); }
