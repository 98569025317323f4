/* Tail-sampling intake in one pass over a serialized ExportTraceServiceRequest.
 *
 * Why: reading each span through protobuf accessors costs ~1 us of Python per span; the sampler only needs,
 * per trace, its spans' bytes and a handful of facts. `scan` walks the wire bytes once and returns, for every
 * (resource, scope), the spans grouped by trace id (first-seen order) as one framed chunk per trace plus the
 * facts the policies read, so Python works per trace, not per span.
 *
 * scan(buf, names, keys) -> (scopes, invalid_spans, spans) or None when the bytes are not what this scanner
 * understands (the caller then uses the pure-Python intake, which handles anything upb accepted).
 *   names: tuple of (utf8 bytes, label) - span names whose duration (end - start, ns) policies read
 *   keys:  tuple of (utf8 bytes, label, gates) - span attribute keys whose values policies read; gates None or
 *          a tuple of serialized KeyValues: then only values encoded exactly like one of them are reported
 *   scopes: [(resource_field, scope_field, runs)], resource_field/scope_field: fields 1 and 3 of
 *   ResourceSpans/ScopeSpans re-framed as they came; runs: [(trace_id, chunk, nspans, payload_bytes, root_at, root_len, error,
 *   exception, start_min, end_max, durations | None, attrs | None)] where chunk is the trace's spans framed as
 *   ScopeSpans field 2 entries, root_at the offset of the last root span's framing in chunk (-1: none) and
 *   root_len that span's length; durations {label: max ns}, attrs {label: [values]}.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "otlp.h"

/* The key of the per-request trace-id tables (hash.h), drawn at import. */
static hash_key trace_key;

typedef struct {
    const uint8_t *data; /* span payload */
    size_t len;
    int32_t next;        /* next span of the same run, -1 at the end */
} span_ref;

typedef struct {
    const uint8_t *tid;  /* 16 bytes */
    int32_t first, last; /* span_ref indexes */
    int32_t nspans;
    size_t chunk_len;
    size_t payload_len; /* spans' own bytes, without framing (what the buffer budget counts) */
} run_info;

typedef struct {
    const uint8_t *pattern;
    Py_ssize_t len;
    PyObject *label;
    PyObject *gates; /* NULL, or a tuple of serialized KeyValues: only values encoded like one of them count */
} wanted;

typedef struct {
    wanted *items;
    Py_ssize_t n;
} wanted_set;

static int read_wanted(PyObject *tuple, wanted_set *out) {
    if (!PyTuple_Check(tuple)) {
        PyErr_SetString(PyExc_TypeError, "expected a tuple of (bytes, label) pairs");
        return 0;
    }
    out->n = PyTuple_GET_SIZE(tuple);
    out->items = out->n ? PyMem_Calloc((size_t)out->n, sizeof(wanted)) : NULL;
    if (out->n && !out->items) {
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < out->n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(tuple, i);
        Py_ssize_t size = PyTuple_Check(pair) ? PyTuple_GET_SIZE(pair) : 0;
        if ((size != 2 && size != 3) || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_TypeError, "expected a tuple of (bytes, label[, gates]) tuples");
            return 0;
        }
        out->items[i].pattern = (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 0));
        out->items[i].len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0));
        out->items[i].label = PyTuple_GET_ITEM(pair, 1);
        PyObject *gates = size == 3 ? PyTuple_GET_ITEM(pair, 2) : Py_None;
        if (gates != Py_None) {
            if (!PyTuple_Check(gates)) {
                PyErr_SetString(PyExc_TypeError, "gates must be a tuple of bytes or None");
                return 0;
            }
            for (Py_ssize_t g = 0; g < PyTuple_GET_SIZE(gates); g++)
                if (!PyBytes_Check(PyTuple_GET_ITEM(gates, g))) {
                    PyErr_SetString(PyExc_TypeError, "gates must be a tuple of bytes or None");
                    return 0;
                }
            out->items[i].gates = gates;
        }
    }
    return 1;
}

static int find_wanted(const wanted_set *set, const uint8_t *p, size_t len) {
    for (Py_ssize_t i = 0; i < set->n; i++)
        if ((size_t)set->items[i].len == len && memcmp(set->items[i].pattern, p, len) == 0) return (int)i;
    return -1;
}

/* True when the serialized KeyValue means the same as one of the gates (the exact values a policy tests for). */
static int gate_matches(PyObject *gates, const uint8_t *kv, size_t len) {
    return gate_hits(gates, kv, len) != 0;
}

/* Python value of the `value` of a serialized KeyValue (str, bool, int, float; None for other kinds and when it
 * has none). Every occurrence of the value field counts, as the parser merges them: the oneof member set last
 * wins, and an occurrence that sets none leaves the earlier one. NULL on error. */
static PyObject *kv_value(const uint8_t *p, size_t len) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int kind = 0;
    const uint8_t *sp = NULL;
    size_t slen = 0;
    uint64_t v = 0;
    while (wire_next(&c, &f) == 1) {
        if (f.number != 2 || f.wtype != 2) continue;
        wire_cur a = wire_span(f.data, f.len);
        wire_field af;
        while (wire_next(&a, &af) == 1) {
            if (af.number == 1 && af.wtype == 2) { kind = 1; sp = af.data; slen = af.len; }
            else if (af.number == 2 && af.wtype == 0) { kind = 2; v = af.value; }
            else if (af.number == 3 && af.wtype == 0) { kind = 3; v = af.value; }
            else if (af.number == 4 && af.wtype == 1) { kind = 4; v = af.value; }
            else if (af.number >= 5 && af.number <= 7 && af.wtype == 2) { kind = 0; }
        }
    }
    switch (kind) {
    case 1: return PyUnicode_DecodeUTF8((const char *)sp, (Py_ssize_t)slen, "replace");
    case 2: return PyBool_FromLong(v != 0);
    case 3: return PyLong_FromLongLong((long long)v);
    case 4: { double d; memcpy(&d, &v, 8); return PyFloat_FromDouble(d); }
    default: Py_RETURN_NONE;
    }
}

typedef struct {
    int root, error, exception, valid;
    const uint8_t *tid;
    uint64_t start, end;
    int name_index;
} span_facts;

/* Reads one span's facts; attribute values of wanted keys are appended to *attrs (created on demand).
 * Returns 1, or 0 on malformed bytes, or -1 on a Python error. */
static int read_span(const uint8_t *p, size_t len, const wanted_set *names, const wanted_set *keys,
                     span_facts *s, PyObject **attrs) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    uint64_t status = 0; /* merged over repeated status fields */
    int r;
    size_t tid_len = 0;
    memset(s, 0, sizeof(*s));
    s->root = 1;
    s->name_index = -1;
    while ((r = wire_next(&c, &f)) == 1) {
        switch (f.number) {
        case 1:
            if (f.wtype != 2) return 0;
            s->tid = f.data; tid_len = f.len;
            break;
        case 4:
            if (f.wtype != 2) return 0;
            s->root = f.len == 0;
            break;
        case 5:
            if (f.wtype != 2) return 0;
            s->name_index = names->n ? find_wanted(names, f.data, f.len) : -1;
            break;
        case 7:
            if (f.wtype != 1) return 0;
            s->start = f.value;
            break;
        case 8:
            if (f.wtype != 1) return 0;
            s->end = f.value;
            break;
        case 9: {
            if (f.wtype != 2) return 0;
            if (!keys->n) break;
            wire_cur kc = wire_span(f.data, f.len);
            wire_field kf;
            const uint8_t *key = NULL;
            size_t key_len = 0;
            int kr;
            while ((kr = wire_next(&kc, &kf)) == 1)
                if (kf.number == 1 && kf.wtype == 2) { key = kf.data; key_len = kf.len; }
            if (kr < 0) return 0;
            int k = key ? find_wanted(keys, key, key_len) : -1;
            if (k < 0) break;
            if (keys->items[k].gates && !gate_matches(keys->items[k].gates, f.data, f.len)) break;
            PyObject *value = kv_value(f.data, f.len);
            if (!value) return -1;
            if (!*attrs && !(*attrs = PyDict_New())) { Py_DECREF(value); return -1; }
            PyObject *list = PyDict_GetItemWithError(*attrs, keys->items[k].label);
            if (!list) {
                if (PyErr_Occurred() || !(list = PyList_New(0))) { Py_DECREF(value); return -1; }
                if (PyDict_SetItem(*attrs, keys->items[k].label, list) < 0) {
                    Py_DECREF(list); Py_DECREF(value); return -1;
                }
                Py_DECREF(list);
            }
            int rc = PyList_Append(list, value);
            Py_DECREF(value);
            if (rc < 0) return -1;
            break;
        }
        case 11: {
            if (f.wtype != 2) return 0;
            if (s->exception) break;
            int hit = event_is_exception(f.data, f.len);
            if (hit < 0) return 0;
            s->exception |= (uint8_t)hit;
            break;
        }
        case 15: {
            if (f.wtype != 2) return 0;
            if (status_code(f.data, f.len, &status) < 0) return 0;
            s->error = status == 2;
            break;
        }
        default:
            break;
        }
    }
    if (r < 0) return 0;
    s->valid = (uint8_t)valid_trace_id(s->tid, tid_len);
    return 1;
}

/* Per-run accumulated facts. */
typedef struct {
    int64_t root_at;
    size_t root_len;
    int error, exception;
    uint64_t start, end;
    PyObject *durations; /* dict or NULL */
    PyObject *attrs;     /* dict or NULL */
} run_facts;

static void free_runs(run_facts *facts, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(facts[i].durations);
        Py_XDECREF(facts[i].attrs);
    }
}


/* Groups one ScopeSpans' spans by trace id and builds its runs list. Returns a new list, Py_None (malformed)
 * or NULL (Python error). */
static PyObject *scope_runs(const uint8_t *p, size_t len, const wanted_set *names, const wanted_set *keys,
                            Py_ssize_t *invalid, Py_ssize_t *total) {
    /* count spans first, so arrays are sized once */
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    Py_ssize_t nspans = 0;
    while ((r = wire_next(&c, &f)) == 1)
        if (f.number == 2) {
            if (f.wtype != 2) Py_RETURN_NONE;
            nspans++;
        }
    if (r < 0) Py_RETURN_NONE;
    PyObject *result = PyList_New(0);
    if (!result || nspans == 0) return result;

    size_t cap = 16;
    while (cap < (size_t)nspans * 2) cap <<= 1;
    span_ref *spans = PyMem_Malloc(sizeof(span_ref) * (size_t)nspans);
    run_info *runs = PyMem_Malloc(sizeof(run_info) * (size_t)nspans);
    run_facts *facts = PyMem_Calloc((size_t)nspans, sizeof(run_facts));
    int32_t *table = PyMem_Malloc(sizeof(int32_t) * cap);
    uint8_t *chunk = NULL;
    Py_ssize_t nruns = 0, ns = 0;
    int failed = 0, malformed = 0;
    if (!spans || !runs || !facts || !table) { PyErr_NoMemory(); failed = 1; goto done; }
    memset(table, 0xFF, sizeof(int32_t) * cap);

    c = wire_span(p, len);
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != 2) continue;
        span_facts s;
        PyObject *attrs = NULL;
        int ok = read_span(f.data, f.len, names, keys, &s, &attrs);
        if (ok <= 0) {
            Py_XDECREF(attrs);
            if (ok < 0) failed = 1; else malformed = 1;
            goto done;
        }
        (*total)++;
        if (!s.valid) {
            Py_XDECREF(attrs);
            (*invalid)++;
            continue;
        }
        size_t slot = (size_t)tid_hash(&trace_key, s.tid) & (cap - 1);
        int32_t ri;
        while ((ri = table[slot]) >= 0 && memcmp(runs[ri].tid, s.tid, 16) != 0) slot = (slot + 1) & (cap - 1);
        run_info *run;
        run_facts *rf;
        spans[ns].data = f.data;
        spans[ns].len = f.len;
        spans[ns].next = -1;
        size_t framed = 1 + wire_varint_size(f.len) + f.len;
        if (ri < 0) {
            ri = (int32_t)nruns++;
            table[slot] = ri;
            run = &runs[ri];
            run->tid = s.tid;
            run->first = run->last = (int32_t)ns;
            run->nspans = 0;
            run->chunk_len = 0;
            run->payload_len = 0;
            rf = &facts[ri];
            rf->root_at = -1;
            rf->start = UINT64_MAX;
            rf->end = 0;
        } else {
            run = &runs[ri];
            rf = &facts[ri];
            spans[run->last].next = (int32_t)ns;
            run->last = (int32_t)ns;
        }
        if (s.root) {
            rf->root_at = (int64_t)run->chunk_len;
            rf->root_len = f.len;
        }
        run->nspans++;
        run->chunk_len += framed;
        run->payload_len += f.len;
        rf->error |= s.error;
        rf->exception |= s.exception;
        if (s.start < rf->start) rf->start = s.start;
        if (s.end > rf->end) rf->end = s.end;
        if (s.name_index >= 0 && s.end >= s.start) {
            PyObject *label = names->items[s.name_index].label;
            if (!rf->durations && !(rf->durations = PyDict_New())) { Py_XDECREF(attrs); failed = 1; goto done; }
            PyObject *old = PyDict_GetItemWithError(rf->durations, label);
            unsigned long long took = s.end - s.start;
            if (!old && PyErr_Occurred()) { Py_XDECREF(attrs); failed = 1; goto done; }
            if (!old || PyLong_AsUnsignedLongLong(old) < took) {
                PyObject *v = PyLong_FromUnsignedLongLong(took);
                if (!v || PyDict_SetItem(rf->durations, label, v) < 0) {
                    Py_XDECREF(v); Py_XDECREF(attrs); failed = 1; goto done;
                }
                Py_DECREF(v);
            }
        }
        if (attrs) {
            if (!rf->attrs) {
                rf->attrs = attrs;
            } else {
                PyObject *key, *values;
                Py_ssize_t pos = 0;
                while (PyDict_Next(attrs, &pos, &key, &values)) {
                    PyObject *list = PyDict_GetItemWithError(rf->attrs, key);
                    if (list) {
                        Py_ssize_t n = PyList_GET_SIZE(list);
                        if (PyList_SetSlice(list, n, n, values) < 0) { Py_DECREF(attrs); failed = 1; goto done; }
                    } else if (PyErr_Occurred() || PyDict_SetItem(rf->attrs, key, values) < 0) {
                        Py_DECREF(attrs); failed = 1; goto done;
                    }
                }
                Py_DECREF(attrs);
            }
        }
        ns++;
    }
    if (r < 0) { malformed = 1; goto done; }

    for (Py_ssize_t i = 0; i < nruns; i++) {
        run_info *run = &runs[i];
        run_facts *rf = &facts[i];
        PyObject *chunk_obj = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)run->chunk_len);
        if (!chunk_obj) { failed = 1; goto done; }
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(chunk_obj);
        for (int32_t si = run->first; si >= 0; si = spans[si].next) {
            *out++ = 0x12;
            out += wire_put_varint(out, spans[si].len);
            memcpy(out, spans[si].data, spans[si].len);
            out += spans[si].len;
        }
        PyObject *item = Py_BuildValue(
            "(y#NinLnNNKKOO)", (const char *)run->tid, (Py_ssize_t)16, chunk_obj, (int)run->nspans,
            (Py_ssize_t)run->payload_len,
            (long long)rf->root_at, (Py_ssize_t)rf->root_len, PyBool_FromLong(rf->error),
            PyBool_FromLong(rf->exception), (unsigned long long)rf->start, (unsigned long long)rf->end,
            rf->durations ? rf->durations : Py_None, rf->attrs ? rf->attrs : Py_None);
        if (!item) { failed = 1; goto done; }
        int rc = PyList_Append(result, item);
        Py_DECREF(item);
        if (rc < 0) { failed = 1; goto done; }
    }

done:
    (void)chunk;
    if (facts) free_runs(facts, nruns);
    PyMem_Free(spans);
    PyMem_Free(runs);
    PyMem_Free(facts);
    PyMem_Free(table);
    if (failed) { Py_DECREF(result); return NULL; }
    if (malformed) { Py_DECREF(result); Py_RETURN_NONE; }
    return result;
}


static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *names_obj, *keys_obj;
    if (!PyArg_ParseTuple(args, "y*OO", &buf, &names_obj, &keys_obj)) return NULL;
    wanted_set names = {0}, keys = {0};
    PyObject *scopes = NULL, *result = NULL;
    Py_ssize_t invalid = 0, total = 0;
    int malformed = 0;
    if (!read_wanted(names_obj, &names) || !read_wanted(keys_obj, &keys)) goto out;
    if (!(scopes = PyList_New(0))) goto out;
    wire_cur c = wire_span(buf.buf, (size_t)buf.len);
    wire_field f;
    int r;
    while (!malformed && (r = wire_next(&c, &f)) == 1) {
        if (f.number != 1) continue;
        if (f.wtype != 2) { malformed = 1; break; }
        PyObject *resource = framed_header(f.data, f.len);
        if (!resource) goto out;
        if (resource == Py_None) { Py_DECREF(resource); malformed = 1; break; }
        wire_cur rc = wire_span(f.data, f.len);
        wire_field rf;
        int rr;
        while ((rr = wire_next(&rc, &rf)) == 1) {
            if (rf.number != 2) continue;
            if (rf.wtype != 2) { rr = -1; break; }
            PyObject *scope = framed_header(rf.data, rf.len);
            if (!scope) { Py_DECREF(resource); goto out; }
            if (scope == Py_None) { Py_DECREF(scope); rr = -1; break; }
            PyObject *runs = scope_runs(rf.data, rf.len, &names, &keys, &invalid, &total);
            if (!runs) { Py_DECREF(scope); Py_DECREF(resource); goto out; }
            if (runs == Py_None) { Py_DECREF(runs); Py_DECREF(scope); rr = -1; break; }
            PyObject *item = PyTuple_Pack(3, resource, scope, runs);
            Py_DECREF(scope);
            Py_DECREF(runs);
            if (!item || PyList_Append(scopes, item) < 0) { Py_XDECREF(item); Py_DECREF(resource); goto out; }
            Py_DECREF(item);
        }
        Py_DECREF(resource);
        if (rr < 0) malformed = 1;
    }
    if (!malformed && r < 0) malformed = 1;
    if (malformed) {
        Py_INCREF(Py_None);
        result = Py_None;
    } else {
        result = Py_BuildValue("(Onn)", scopes, invalid, total);
    }
out:
    Py_XDECREF(scopes);
    PyMem_Free(names.items);
    PyMem_Free(keys.items);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Group a traces request's spans by (resource, scope, trace id) with their facts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sampling", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sampling(void) {
    if (!hash_key_random(&trace_key)) return NULL;
    return PyModule_Create(&module);
}
