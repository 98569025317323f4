/* Protobuf wire-format reading shared by recohop's native scanners.
 *
 * Every reader is bounds-checked: a scanner given truncated or hostile bytes reports "malformed" (the caller
 * then takes the pure-Python path, which gives the proper gRPC error); it never reads outside the buffer.
 * Only the wire types OTLP uses are accepted (varint, fixed64, length-delimited, fixed32).
 */
#ifndef RECOHOP_WIRE_H
#define RECOHOP_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The readers run once per field of every request in four walks: inlined into each loop, the field's parts stay
 * in registers and what a caller does not read is not computed (called, wire_next was 40 % of the walks'
 * instructions). */
#if defined(__GNUC__)
#define WIRE_INLINE __attribute__((always_inline))
#else
#define WIRE_INLINE
#endif

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} wire_cur;

typedef struct {
    uint32_t number;
    uint8_t wtype;
    uint64_t value;      /* varint, fixed64 or fixed32 value */
    const uint8_t *data; /* length-delimited payload */
    size_t len;
    const uint8_t *start; /* first byte of the field (its tag) */
} wire_field;

static inline wire_cur wire_span(const uint8_t *p, size_t len) {
    wire_cur c = {p, p + len};
    return c;
}

/* 1 on success, 0 on truncation or a varint longer than 10 bytes. */
static inline WIRE_INLINE int wire_varint(wire_cur *c, uint64_t *out) {
    if (c->p < c->end && *c->p < 0x80) { /* one byte: most tags and lengths in OTLP */
        *out = *c->p++;
        return 1;
    }
    uint64_t v = 0;
    int shift = 0;
    while (c->p < c->end) {
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = v;
            return 1;
        }
        shift += 7;
        if (shift > 63) return 0;
    }
    return 0;
}

static inline uint64_t wire_le64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8); /* protobuf's fixed64 is little-endian, like the machine: one load */
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

/* The next field: 1 = read, 0 = end of message, -1 = malformed. */
static inline WIRE_INLINE int wire_next(wire_cur *c, wire_field *f) {
    const uint8_t *p = c->p;
    if (p >= c->end) return 0;
    f->start = p;
    f->value = 0; /* every part set on every path: a caller reading one that its wire type leaves unset reads 0 */
    f->data = NULL;
    f->len = 0;
    if (c->end - p >= 2 && (p[0] & 0x87) == 2 && p[0] >= 8 && p[1] < 0x80) {
        /* one-byte tag of a length-delimited field with a one-byte length: most fields of OTLP */
        size_t n = p[1];
        if (n > (size_t)(c->end - p - 2)) return -1;
        f->number = p[0] >> 3;
        f->wtype = 2;
        f->data = p + 2;
        f->len = n;
        c->p = p + 2 + n;
        return 1;
    }
    uint64_t key;
    if (!wire_varint(c, &key)) return -1;
    if ((key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF) return -1;
    f->number = (uint32_t)(key >> 3);
    f->wtype = (uint8_t)(key & 7);
    switch (f->wtype) {
    case 0:
        return wire_varint(c, &f->value) ? 1 : -1;
    case 1:
        if (c->end - c->p < 8) return -1;
        f->value = wire_le64(c->p);
        c->p += 8;
        return 1;
    case 2: {
        uint64_t n;
        if (!wire_varint(c, &n)) return -1;
        if (n > (uint64_t)(c->end - c->p)) return -1;
        f->data = c->p;
        f->len = (size_t)n;
        c->p += n;
        return 1;
    }
    case 5:
        if (c->end - c->p < 4) return -1;
        f->value = (uint64_t)c->p[0] | ((uint64_t)c->p[1] << 8) | ((uint64_t)c->p[2] << 16) |
                   ((uint64_t)c->p[3] << 24);
        c->p += 4;
        return 1;
    default:
        return -1; /* groups are not part of OTLP */
    }
}

/* Bytes a varint of this value takes. */
static inline size_t wire_varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Writes a varint at out (room for 10 bytes assumed); returns bytes written. */
static inline size_t wire_put_varint(uint8_t *out, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

#endif
