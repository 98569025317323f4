/* Span limits and id checks in one pass over a serialized ExportTraceServiceRequest.
 *
 * Why: the limits stage runs first on every span of every request, and nearly every request is within limits.
 * `scan` walks the wire bytes once and only counts what is wrong, so the common case costs one C pass and the
 * stage passes the very same bytes object on; Python parses and fixes a request only when a count is not zero.
 *
 * scan(buf, limits, min_ns, max_ns) -> tuple of COUNTS ints (order below) or None when the bytes are not what
 * this scanner fully understands (the caller then uses the pure-Python check, which is the reference).
 * A tuple also vouches that protobuf (upb) parses the bytes: before counting, `valid_message` walks every field
 * the installed schema knows (`set_schema`, built from the descriptors by processor/limits/check.py) and
 * checks what upb checks (wire format, tag and length sizes, UTF-8 of strings, nesting depth); whatever it is
 * not sure of gives None. So the receiver need not parse a request the limits stage comes first for.
 * Both walks run without the GIL (the bytes object is immutable and held by the buffer).
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

/* ---- validation: what upb refuses, from the schema Python hands over once ---------------------------------- */

enum { F_OTHER = 0, F_STRING = 1, F_MESSAGE = 2, F_PACKABLE = 3 };
#define SCHEMA_MAX_FIELD 64 /* field numbers above this are looked up in no table: no OTLP message has them */
#define VALID_MAX_DEPTH 64  /* message levels (upb refuses past ~100) */

typedef struct {
    uint8_t kind[SCHEMA_MAX_FIELD + 1];
    int16_t child[SCHEMA_MAX_FIELD + 1];
} schema_msg;

static schema_msg *schema = NULL; /* message 0 is ExportTraceServiceRequest; NULL until set_schema */
static Py_ssize_t schema_len = 0;
static Py_ssize_t keyvalue_msg = -1; /* the schema index of KeyValue (its common shapes take a shortcut) */

/* Strict UTF-8 as upb checks it: no overlongs, no surrogates, nothing above U+10FFFF. */
static int valid_utf8_text(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!(w & 0x8080808080808080ULL)) { i += 8; continue; }
        }
        uint8_t b = p[i];
        if (b < 0x80) { i++; continue; }
        size_t need;
        uint32_t cp;
        if (b >= 0xC2 && b <= 0xDF) { need = 1; cp = b & 0x1F; }
        else if (b >= 0xE0 && b <= 0xEF) { need = 2; cp = b & 0x0F; }
        else if (b >= 0xF0 && b <= 0xF4) { need = 3; cp = b & 0x07; }
        else return 0;
        if (n - i - 1 < need) return 0;
        for (size_t k = 1; k <= need; k++) {
            uint8_t c = p[i + k];
            if ((c & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (c & 0x3F);
        }
        if ((need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* valid_utf8_text, after a quicker look for the common all-ASCII string: whole words, the last one overlapping
 * the one before, or the bytes of a string shorter than a word. */
static int valid_utf8(const uint8_t *p, size_t n) {
    if (n >= 8) {
        uint64_t any = 0, w;
        for (size_t i = 0; i + 8 <= n; i += 8) {
            memcpy(&w, p + i, 8);
            any |= w;
        }
        memcpy(&w, p + n - 8, 8);
        if (!((any | w) & 0x8080808080808080ULL)) return 1;
    } else {
        uint8_t any = 0;
        for (size_t i = 0; i < n; i++) any |= p[i];
        if (any < 0x80) return 1;
    }
    return valid_utf8_text(p, n);
}

static size_t varint_bytes(const uint8_t *p, const uint8_t *end) {
    size_t n = 0;
    while (p + n < end && (p[n] & 0x80)) n++;
    return n + 1;
}

/* The common KeyValue in its canonical encoding: a key, then an AnyValue holding one string, bool, int or
 * double, every length in one byte. 1 valid, 0 invalid, -1 another shape (the generic walk decides). */
static int valid_keyvalue_shortcut(const uint8_t *p, size_t len) {
    if (len < 4 || p[0] != 0x0A || p[1] >= 0x80) return -1;
    size_t kl = p[1];
    if (kl + 4 > len || p[2 + kl] != 0x12 || p[3 + kl] >= 0x80 || kl + 4 + p[3 + kl] != len) return -1;
    const uint8_t *v = p + 4 + kl;
    size_t vl = p[3 + kl];
    if (vl == 0) return valid_utf8(p + 2, kl);
    switch (v[0]) {
    case 0x0A: /* string_value */
        if (vl < 2 || v[1] >= 0x80 || (size_t)v[1] + 2 != vl) return -1;
        return valid_utf8(p + 2, kl) && valid_utf8(v + 2, v[1]);
    case 0x10: /* bool_value */
    case 0x18: /* int_value: a varint filling the rest, at most 10 bytes */
        if (vl < 2 || vl > 11 || v[vl - 1] >= 0x80) return -1;
        for (size_t i = 1; i + 1 < vl; i++)
            if (v[i] < 0x80) return -1;
        return valid_utf8(p + 2, kl);
    case 0x21: /* double_value */
        return vl == 9 ? valid_utf8(p + 2, kl) : -1;
    default:
        return -1;
    }
}

/* 1 when upb parses p as message `msg` of the schema, 0 when not sure. */
static int valid_message(const uint8_t *p, size_t len, Py_ssize_t msg, int depth) {
    if (depth > VALID_MAX_DEPTH) return 0;
    if (msg == keyvalue_msg) {
        int quick = valid_keyvalue_shortcut(p, len);
        if (quick >= 0) return quick;
    }
    const schema_msg *m = &schema[msg];
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    while ((r = wire_next(&c, &f)) == 1) {
        /* a tag or a length varint over 5 bytes is what upb does not take; tag and length in 6 bytes are not */
        if (f.start[0] >= 0x80 && varint_bytes(f.start, c.end) > 5) return 0;
        if (f.wtype != 2) continue;
        size_t head = (size_t)(f.data - f.start);
        if (head > 6 && head - varint_bytes(f.start, c.end) > 5) return 0;
        if (f.number > SCHEMA_MAX_FIELD) continue;
        switch (m->kind[f.number]) {
        case F_STRING:
            if (!valid_utf8(f.data, f.len)) return 0;
            break;
        case F_MESSAGE:
            if (!valid_message(f.data, f.len, m->child[f.number], depth + 1)) return 0;
            break;
        case F_PACKABLE:
            return 0; /* packed repeated scalars: left to upb */
        default:
            break; /* bytes, or a scalar field given as length-delimited: upb keeps it as an unknown field */
        }
    }
    return r == 0;
}

static PyObject *set_schema(PyObject *self, PyObject *args) {
    PyObject *arg;
    Py_ssize_t kv;
    if (!PyArg_ParseTuple(args, "On", &arg, &kv)) return NULL;
    if (!PyTuple_Check(arg) || PyTuple_GET_SIZE(arg) < 1 || PyTuple_GET_SIZE(arg) > 1000 || kv < -1 ||
        kv >= PyTuple_GET_SIZE(arg)) {
        PyErr_SetString(PyExc_TypeError, "schema: a tuple of messages, each a tuple of (number, kind, child)");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(arg);
    schema_msg *table = PyMem_RawCalloc((size_t)n, sizeof(schema_msg));
    if (!table) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fields = PyTuple_GET_ITEM(arg, i);
        if (!PyTuple_Check(fields)) goto bad;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fields); j++) {
            long number, kind, child;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, j), "lll", &number, &kind, &child)) goto fail;
            if (number < 1 || kind < F_OTHER || kind > F_PACKABLE || child < -1 || child >= n) goto bad;
            if (kind == F_MESSAGE && child < 0) goto bad;
            if (number > SCHEMA_MAX_FIELD) {
                if (kind == F_OTHER) continue;
                goto bad; /* a field this table cannot hold would go unchecked */
            }
            table[i].kind[number] = (uint8_t)kind;
            table[i].child[number] = (int16_t)child;
        }
    }
    /* An earlier table is left allocated: a walk on another thread (no GIL) may still be reading it. */
    keyvalue_msg = -1; /* set after the table: a walk in flight never pairs the new index with the old table */
    schema = table;
    schema_len = n;
    keyvalue_msg = kv;
    Py_RETURN_NONE;
bad:
    PyErr_SetString(PyExc_ValueError, "schema: (number >= 1, kind 0-3, child index) per field");
fail:
    PyMem_RawFree(table);
    return NULL;
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
    if (schema == NULL) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_RuntimeError, "set_schema first");
        return NULL;
    }
    uint64_t counts[COUNTS] = {0};
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = valid_message(buf.buf, (size_t)buf.len, 0, 0) && check_request(buf.buf, (size_t)buf.len, &lim, counts);
    Py_END_ALLOW_THREADS
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
    {"scan", scan, METH_VARARGS,
     "Count what in a traces request is over the span limits or has invalid ids (None: not sure it parses)."},
    {"set_schema", set_schema, METH_VARARGS,
     "set_schema(table, keyvalue_index): the ExportTraceServiceRequest schema for validation, per message a "
     "tuple of (number, kind, child), and which message is KeyValue (-1: none)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_limits", NULL, -1, methods};

PyMODINIT_FUNC PyInit__limits(void) { return PyModule_Create(&module); }
