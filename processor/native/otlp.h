/* OTLP helpers shared by the native scanners that group spans by trace (`_sampling`, `_tracestore`). */
#ifndef RECOHOP_OTLP_H
#define RECOHOP_OTLP_H

#include <Python.h>

#include "hash.h"
#include "wire.h"

/* The hash tables of trace ids index by: SipHash under a secret key (hash.h), so no client can compute ids that
 * share a bucket; all 128 bits of the id reach every bit of the hash (ids are often not uniformly random in
 * every byte: X-Ray-style ids start with a timestamp, replayed ids with a counter). */
static inline uint64_t tid_hash(const hash_key *k, const uint8_t *tid) {
    return siphash13(k, tid, 16);
}

/* Fields 1 and 3 (resource/scope and schema_url) of a ResourceSpans/ScopeSpans, re-framed, written to `out`
 * (when not NULL); returns their size, or -1 when malformed. */
static Py_ssize_t framed_header_into(const uint8_t *p, size_t len, uint8_t *out) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    size_t total = 0;
    while ((r = wire_next(&c, &f)) == 1)
        if ((f.number == 1 || f.number == 3) && f.wtype == 2) {
            if (out) {
                uint8_t *o = out + total;
                *o++ = (uint8_t)((f.number << 3) | 2);
                o += wire_put_varint(o, f.len);
                memcpy(o, f.data, f.len);
            }
            total += 1 + wire_varint_size(f.len) + f.len;
        }
    return r < 0 ? -1 : (Py_ssize_t)total;
}

/* framed_header_into as one bytes object; None when malformed, NULL on a Python error. */
static PyObject *framed_header(const uint8_t *p, size_t len) {
    Py_ssize_t total = framed_header_into(p, len, NULL);
    if (total < 0) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) return NULL;
    framed_header_into(p, len, (uint8_t *)PyBytes_AS_STRING(out));
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

/* Span.status (field 15): the code it carries, merged as the parser merges a repeated message field: *code keeps
 * its value unless this occurrence sets one (a later `code` wins). 1 ok, -1 malformed. */
static int status_code(const uint8_t *p, size_t len, uint64_t *code) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    while ((r = wire_next(&c, &f)) == 1)
        if (f.number == 3 && f.wtype == 0) *code = f.value;
    return r < 0 ? -1 : 1;
}

/* The canonical encoding (what protobuf itself writes: key, then a value holding its one member) of a KeyValue
 * whose value is a scalar (string, bool, int, double, bytes) or empty, whatever valid encoding it came in:
 * fields in any order (otelcol writes the value before the key), a field given twice (the last wins; value
 * occurrences merge, so the oneof member set last wins), a bool as any non-zero varint, overlong varints, and
 * unknown or wrong-wire-type fields, which the parser skips. Its length in out, or 0 when the value is an array
 * or kvlist, the bytes are malformed, or it does not fit in cap (then it equals no short canonical KeyValue). */
static size_t canonical_kv(const uint8_t *p, size_t n, uint8_t *out, size_t cap) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    const uint8_t *key = NULL, *s = NULL;
    size_t keylen = 0, slen = 0;
    uint64_t v = 0;
    int has_value = 0, member = 0, r;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number == 1 && f.wtype == 2) {
            key = f.data;
            keylen = f.len;
        } else if (f.number == 2 && f.wtype == 2) {
            has_value = 1;
            wire_cur a = wire_span(f.data, f.len);
            wire_field af;
            int ar;
            while ((ar = wire_next(&a, &af)) == 1) {
                if ((af.number == 1 || af.number == 7) && af.wtype == 2) {
                    member = (int)af.number; s = af.data; slen = af.len;
                } else if ((af.number == 2 || af.number == 3) && af.wtype == 0) {
                    member = (int)af.number; v = af.value;
                } else if (af.number == 4 && af.wtype == 1) {
                    member = 4; v = af.value;
                } else if ((af.number == 5 || af.number == 6) && af.wtype == 2) {
                    member = (int)af.number;
                }
            }
            if (ar < 0) return 0;
        }
    }
    if (r < 0 || member == 5 || member == 6) return 0;
    uint8_t any[16];
    size_t anylen = 0;
    switch (member) {
    case 2: any[0] = 0x10; any[1] = v != 0; anylen = 2; break;
    case 3: any[0] = 0x18; anylen = 1 + wire_put_varint(any + 1, v); break;
    case 4: any[0] = 0x21; for (int i = 0; i < 8; i++) any[1 + i] = (uint8_t)(v >> (8 * i)); anylen = 9; break;
    default: break;
    }
    size_t body = member == 1 || member == 7 ? 1 + wire_varint_size(slen) + slen : anylen;
    size_t need = (keylen ? 1 + wire_varint_size(keylen) + keylen : 0) + (has_value ? 1 + wire_varint_size(body) + body : 0);
    if (need > cap) return 0;
    size_t w = 0;
    if (keylen) {
        out[w++] = 0x0A;
        w += wire_put_varint(out + w, keylen);
        memcpy(out + w, key, keylen);
        w += keylen;
    }
    if (has_value) {
        out[w++] = 0x12;
        w += wire_put_varint(out + w, body);
        if (member == 1 || member == 7) {
            out[w++] = (uint8_t)((member << 3) | 2);
            w += wire_put_varint(out + w, slen);
            memcpy(out + w, s, slen);
            w += slen;
        } else {
            memcpy(out + w, any, anylen);
            w += anylen;
        }
    }
    return w;
}

/* Bit g set when the attribute (a serialized KeyValue) means the same as gate g (a canonical KeyValue, see
 * processor/sampling: the exact values a policy tests for). Byte-equal is the fast case; any other valid
 * encoding is compared in its canonical form. The gates are plain byte arrays (no Python object is touched:
 * the store's intake calls this without the GIL). */
static uint64_t gate_hits(const uint8_t *const *gates, const size_t *gate_lens, size_t n, const uint8_t *kv,
                          size_t len) {
    uint64_t hits = 0;
    for (size_t g = 0; g < n && g < 64; g++)
        if (gate_lens[g] == len && memcmp(gates[g], kv, len) == 0) hits |= 1ULL << g;
    if (hits) return hits;
    uint8_t canon[512];
    size_t clen = canonical_kv(kv, len, canon, sizeof canon);
    if (!clen || (clen == len && memcmp(canon, kv, len) == 0)) return 0;
    for (size_t g = 0; g < n && g < 64; g++)
        if (gate_lens[g] == clen && memcmp(gates[g], canon, clen) == 0) hits |= 1ULL << g;
    return hits;
}

/* A trace id the sampler can group by: 16 bytes, not all zero. */
static int valid_trace_id(const uint8_t *tid, size_t len) {
    if (len != 16) return 0;
    for (int i = 0; i < 16; i++)
        if (tid[i]) return 1;
    return 0;
}

#endif
