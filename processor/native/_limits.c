/* Span limits and id checks in one pass over a serialized ExportTraceServiceRequest.
 *
 * Why: the limits stage runs first on every span of every request, and nearly every request is within limits.
 * `scan` walks the wire bytes once and only counts what is wrong, so the common case costs one C pass and the
 * stage passes the very same bytes object on; Python parses and fixes a request only when a count is not zero.
 *
 * scan(buf, limits, min_ns, max_ns) -> tuple of COUNTS ints (order below) or None when the bytes are not what
 * this scanner fully understands (the caller then uses the pure-Python check, which is the reference).
 *   limits: (max_attributes_per_span, max_attribute_value_length, max_events_per_span, max_links_per_span,
 *            max_attributes_per_event, max_attributes_per_link, max_attributes_per_resource)
 *   min_ns / max_ns: spans starting before min_ns are "too old"; spans starting or ending after max_ns are
 *            "in the future".
 * Semantics (processor/limits/check.py is the reference): a span whose ids are invalid is counted once under
 * the first failing id (trace, span, parent) and nothing else of it is counted; of a valid span only the first
 * N attributes / events / links are kept, and only kept items are looked into further.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "wire.h"

enum {
    C_SPANS, C_BAD_TRACE_ID, C_BAD_SPAN_ID, C_BAD_PARENT_ID, C_END_BEFORE_START, C_TOO_OLD, C_IN_FUTURE,
    C_SPAN_ATTRS, C_EVENT_ATTRS, C_LINK_ATTRS, C_EVENTS, C_LINKS, C_RESOURCE_ATTRS, C_SCOPE_ATTRS, C_VALUES,
    COUNTS
};

typedef struct {
    uint64_t span_attrs, value_len, events, links, event_attrs, link_attrs, resource_attrs;
    uint64_t min_ns, max_ns;
} limits;

#define MAX_DEPTH 64

/* Counts string and bytes values longer than the limit in a serialized AnyValue (arrays and kvlists
 * included). 1 = understood, 0 = fall back to Python (malformed, too deep, or a oneof given twice, which
 * protobuf resolves by merging or last-wins rules this scanner does not reproduce). */
static int check_kv(const uint8_t *p, size_t len, const limits *lim, int depth, uint64_t *values);

static int check_any(const uint8_t *p, size_t len, const limits *lim, int depth, uint64_t *values) {
    if (depth > MAX_DEPTH) return 0;
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r, seen = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number < 1 || f.number > 7) continue;
        if (seen++) return 0;
        switch (f.number) {
        case 1:
        case 7:
            if (f.wtype != 2) return 0;
            if (f.len > lim->value_len) (*values)++;
            break;
        case 5:
        case 6: {
            if (f.wtype != 2) return 0;
            wire_cur ac = wire_span(f.data, f.len);
            wire_field af;
            int ar;
            while ((ar = wire_next(&ac, &af)) == 1) {
                if (af.number != 1) continue;
                if (af.wtype != 2) return 0;
                if (f.number == 5 ? !check_any(af.data, af.len, lim, depth + 1, values)
                                  : !check_kv(af.data, af.len, lim, depth + 1, values))
                    return 0;
            }
            if (ar < 0) return 0;
            break;
        }
        case 2:
        case 3:
            if (f.wtype != 0) return 0;
            break;
        case 4:
            if (f.wtype != 1) return 0;
            break;
        }
    }
    return r == 0;
}

static int check_kv(const uint8_t *p, size_t len, const limits *lim, int depth, uint64_t *values) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r, seen = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number == 1 && f.wtype != 2) return 0;
        if (f.number != 2) continue;
        if (f.wtype != 2 || seen++) return 0;
        if (!check_any(f.data, f.len, lim, depth + 1, values)) return 0;
    }
    return r == 0;
}

/* A message whose field `attrs_field` is its attributes (Resource, InstrumentationScope, Event, Link):
 * counts attributes over `max` into *dropped and long values of the kept ones into *values. */
static int check_attrs_of(const uint8_t *p, size_t len, uint32_t attrs_field, uint64_t max, const limits *lim,
                          uint64_t *dropped, uint64_t *values) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    uint64_t n = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != attrs_field) continue;
        if (f.wtype != 2) return 0;
        if (n++ >= max) { (*dropped)++; continue; }
        if (f.len > lim->value_len && !check_kv(f.data, f.len, lim, 0, values)) return 0;
    }
    return r == 0;
}

/* Shortcuts that keep the common case to one walk of each span's top-level fields (results are the same):
 * a KeyValue of at most max_attribute_value_length bytes cannot hold a longer value, and a message with more
 * than `max_attrs` attributes takes at least 2 bytes per attribute (tag + length). */
static int may_exceed(size_t len, uint64_t max_attrs, const limits *lim) {
    return len / 2 > max_attrs || len > lim->value_len;
}

static int nonzero(const uint8_t *p, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (p[i]) return 1;
    return 0;
}

static int check_span(const uint8_t *p, size_t len, const limits *lim, uint64_t *counts) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    const uint8_t *tid = NULL, *sid = NULL;
    size_t tid_len = 0, sid_len = 0, parent_len = 0;
    uint64_t start = 0, end = 0, nattrs = 0, nevents = 0, nlinks = 0;
    uint64_t local[COUNTS] = {0};
    while ((r = wire_next(&c, &f)) == 1) {
        switch (f.number) {
        case 1:
            if (f.wtype != 2) return 0;
            tid = f.data; tid_len = f.len;
            break;
        case 2:
            if (f.wtype != 2) return 0;
            sid = f.data; sid_len = f.len;
            break;
        case 4:
            if (f.wtype != 2) return 0;
            parent_len = f.len;
            break;
        case 7:
            if (f.wtype != 1) return 0;
            start = f.value;
            break;
        case 8:
            if (f.wtype != 1) return 0;
            end = f.value;
            break;
        case 9:
            if (f.wtype != 2) return 0;
            if (nattrs++ >= lim->span_attrs) { local[C_SPAN_ATTRS]++; break; }
            if (f.len > lim->value_len && !check_kv(f.data, f.len, lim, 0, &local[C_VALUES])) return 0;
            break;
        case 11:
            if (f.wtype != 2) return 0;
            if (nevents++ >= lim->events) { local[C_EVENTS]++; break; }
            if (may_exceed(f.len, lim->event_attrs, lim) &&
                !check_attrs_of(f.data, f.len, 3, lim->event_attrs, lim, &local[C_EVENT_ATTRS], &local[C_VALUES]))
                return 0;
            break;
        case 13:
            if (f.wtype != 2) return 0;
            if (nlinks++ >= lim->links) { local[C_LINKS]++; break; }
            if (may_exceed(f.len, lim->link_attrs, lim) &&
                !check_attrs_of(f.data, f.len, 4, lim->link_attrs, lim, &local[C_LINK_ATTRS], &local[C_VALUES]))
                return 0;
            break;
        default:
            break;
        }
    }
    if (r < 0) return 0;
    counts[C_SPANS]++;
    if (tid_len != 16 || !nonzero(tid, tid_len)) { counts[C_BAD_TRACE_ID]++; return 1; }
    if (sid_len != 8 || !nonzero(sid, sid_len)) { counts[C_BAD_SPAN_ID]++; return 1; }
    if (parent_len != 0 && parent_len != 8) { counts[C_BAD_PARENT_ID]++; return 1; }
    if (end < start) counts[C_END_BEFORE_START]++;
    if (start < lim->min_ns) counts[C_TOO_OLD]++;
    if (start > lim->max_ns || end > lim->max_ns) counts[C_IN_FUTURE]++;
    for (int i = C_SPAN_ATTRS; i < COUNTS; i++) counts[i] += local[i];
    return 1;
}

static int check_scope_spans(const uint8_t *p, size_t len, const limits *lim, uint64_t *counts) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r, scopes = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number == 1) {
            if (f.wtype != 2 || scopes++) return 0; /* a repeated sub-message would be merged */
            if (!check_attrs_of(f.data, f.len, 3, lim->resource_attrs, lim, &counts[C_SCOPE_ATTRS],
                                &counts[C_VALUES]))
                return 0;
        } else if (f.number == 2) {
            if (f.wtype != 2 || !check_span(f.data, f.len, lim, counts)) return 0;
        }
    }
    return r == 0;
}

static int check_request(const uint8_t *p, size_t len, const limits *lim, uint64_t *counts) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != 1) continue;
        if (f.wtype != 2) return 0;
        wire_cur rc = wire_span(f.data, f.len);
        wire_field rf;
        int rr, resources = 0;
        while ((rr = wire_next(&rc, &rf)) == 1) {
            if (rf.number == 1) {
                if (rf.wtype != 2 || resources++) return 0;
                if (!check_attrs_of(rf.data, rf.len, 1, lim->resource_attrs, lim, &counts[C_RESOURCE_ATTRS],
                                    &counts[C_VALUES]))
                    return 0;
            } else if (rf.number == 2) {
                if (rf.wtype != 2 || !check_scope_spans(rf.data, rf.len, lim, counts)) return 0;
            }
        }
        if (rr < 0) return 0;
    }
    return r == 0;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    limits lim;
    unsigned long long v[7], min_ns, max_ns;
    if (!PyArg_ParseTuple(args, "y*(KKKKKKK)KK", &buf, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &min_ns,
                          &max_ns))
        return NULL;
    lim.span_attrs = v[0];
    lim.value_len = v[1];
    lim.events = v[2];
    lim.links = v[3];
    lim.event_attrs = v[4];
    lim.link_attrs = v[5];
    lim.resource_attrs = v[6];
    lim.min_ns = min_ns;
    lim.max_ns = max_ns;
    uint64_t counts[COUNTS] = {0};
    int ok = check_request(buf.buf, (size_t)buf.len, &lim, counts);
    PyBuffer_Release(&buf);
    if (!ok) Py_RETURN_NONE;
    PyObject *out = PyTuple_New(COUNTS);
    if (!out) return NULL;
    for (int i = 0; i < COUNTS; i++) {
        PyObject *n = PyLong_FromUnsignedLongLong(counts[i]);
        if (!n) { Py_DECREF(out); return NULL; }
        PyTuple_SET_ITEM(out, i, n);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Count what in a traces request is over the span limits or has invalid ids."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_limits", NULL, -1, methods};

PyMODINIT_FUNC PyInit__limits(void) { return PyModule_Create(&module); }
