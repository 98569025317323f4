/* OTLP helpers shared by the native scanners that group spans by trace (`_sampling`, `_tracestore`). */
#ifndef RECOHOP_OTLP_H
#define RECOHOP_OTLP_H

#include <Python.h>

#include "wire.h"

/* All 128 bits of the id reach the low bits the tables index by (splitmix64's finalizer): ids are often not
 * uniformly random in every byte (X-Ray-style ids start with a timestamp, replayed ids with a counter), and a
 * hash whose low bits depended on a few id bytes would chain those ids together. */
static uint64_t tid_hash(const uint8_t *tid) {
    uint64_t a, b;
    memcpy(&a, tid, 8);
    memcpy(&b, tid + 8, 8);
    uint64_t x = a ^ (b * 0x9E3779B97F4A7C15ULL) ^ (b >> 29);
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return x;
}

/* Fields 1 and 3 (resource/scope and schema_url) of a ResourceSpans/ScopeSpans, re-framed, as one bytes object;
 * None when malformed, NULL on a Python error. */
static PyObject *framed_header(const uint8_t *p, size_t len) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    size_t total = 0;
    while ((r = wire_next(&c, &f)) == 1)
        if ((f.number == 1 || f.number == 3) && f.wtype == 2) total += 1 + wire_varint_size(f.len) + f.len;
    if (r < 0) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!out) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    c = wire_span(p, len);
    while (wire_next(&c, &f) == 1)
        if ((f.number == 1 || f.number == 3) && f.wtype == 2) {
            *o++ = (uint8_t)((f.number << 3) | 2);
            o += wire_put_varint(o, f.len);
            memcpy(o, f.data, f.len);
            o += f.len;
        }
    return out;
}

/* Span.events entry (field 11): 1 when the event is named "exception", 0 when not, -1 when malformed. */
static int event_is_exception(const uint8_t *p, size_t len) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r, hit = 0;
    while ((r = wire_next(&c, &f)) == 1)
        if (f.number == 2 && f.wtype == 2) hit = f.len == 9 && memcmp(f.data, "exception", 9) == 0;
    return r < 0 ? -1 : hit;
}

/* Span.status (field 15): 1 when its code is ERROR, 0 when not, -1 when malformed. */
static int status_is_error(const uint8_t *p, size_t len) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r, error = 0;
    while ((r = wire_next(&c, &f)) == 1)
        if (f.number == 3 && f.wtype == 0) error = f.value == 2;
    return r < 0 ? -1 : error;
}

/* A trace id the sampler can group by: 16 bytes, not all zero. */
static int valid_trace_id(const uint8_t *tid, size_t len) {
    if (len != 16) return 0;
    for (int i = 0; i < 16; i++)
        if (tid[i]) return 1;
    return 0;
}

#endif
