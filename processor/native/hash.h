/* Keyed hashing for every table the native scanners index by bytes a client sends (trace ids, attribute values,
 * keys, span names).
 *
 * Why: an unkeyed hash can be inverted, so a client can compute any number of inputs that fall into one bucket
 * and make every lookup walk a chain as long as its flood (issue 20: 40,000 such trace ids took 100x as long to
 * acknowledge as random ones, holding the GIL and the pipeline lock). SipHash-1-3 (the function CPython hashes
 * str and bytes with) under a random 128-bit key drawn per process at import cannot be aimed at without the
 * key. Nothing decided from these hashes leaves the process: decisions that must agree across instances use the
 * consistent-sampling hash (processor/sampling/consistent.py), which is separate and unkeyed on purpose.
 */
#ifndef RECOHOP_HASH_H
#define RECOHOP_HASH_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t k0, k1;
} hash_key;

#define HASH_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define HASH_SIPROUND(v0, v1, v2, v3)                                                                        \
    do {                                                                                                     \
        v0 += v1; v1 = HASH_ROTL(v1, 13); v1 ^= v0; v0 = HASH_ROTL(v0, 32);                                  \
        v2 += v3; v3 = HASH_ROTL(v3, 16); v3 ^= v2;                                                          \
        v0 += v3; v3 = HASH_ROTL(v3, 21); v3 ^= v0;                                                          \
        v2 += v1; v1 = HASH_ROTL(v1, 17); v1 ^= v2; v2 = HASH_ROTL(v2, 32);                                  \
    } while (0)

static inline uint64_t hash_le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* SipHash-1-3 of p[:n] under key k (one compression round per 8-byte block, three finalisation rounds). */
static inline uint64_t siphash13(const hash_key *k, const uint8_t *p, size_t n) {
    uint64_t v0 = k->k0 ^ 0x736f6d6570736575ULL, v1 = k->k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k->k0 ^ 0x6c7967656e657261ULL, v3 = k->k1 ^ 0x7465646279746573ULL;
    uint64_t b = (uint64_t)n << 56;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t m = hash_le64(p + i);
        v3 ^= m;
        HASH_SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    for (size_t j = 0; i + j < n; j++) b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b;
    HASH_SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    HASH_SIPROUND(v0, v1, v2, v3);
    HASH_SIPROUND(v0, v1, v2, v3);
    HASH_SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

/* A fresh random key from os.urandom (the kernel's CSPRNG). 0 with an exception set on failure. */
static int hash_key_random(hash_key *k) {
    PyObject *os = PyImport_ImportModule("os");
    if (!os) return 0;
    PyObject *raw = PyObject_CallMethod(os, "urandom", "i", 16);
    Py_DECREF(os);
    if (!raw) return 0;
    if (!PyBytes_Check(raw) || PyBytes_GET_SIZE(raw) != 16) {
        Py_DECREF(raw);
        PyErr_SetString(PyExc_RuntimeError, "os.urandom(16) did not return 16 bytes");
        return 0;
    }
    const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(raw);
    k->k0 = hash_le64(b);
    k->k1 = hash_le64(b + 8);
    Py_DECREF(raw);
    return 1;
}

/* A new key derived from k (for a table that re-keys itself: no Python call, and unknowable without k). */
static inline hash_key hash_key_derive(const hash_key *k, uint64_t counter) {
    uint8_t msg[16];
    memcpy(msg, &counter, 8);
    memcpy(msg + 8, "re-keyed", 8);
    hash_key out;
    out.k0 = siphash13(k, msg, 16);
    msg[8] ^= 0x5a;
    out.k1 = siphash13(k, msg, 16);
    return out;
}

/* A shortcut before the keyed hash, for walks that meet the same few strings span after span (names, label
 * values, attribute keys): each call keeps the entry it last found per bucket of this (length, last byte) mix
 * and compares it first. Only a memcmp decides a hit, so a crafted input costs at most one compare more. */
#define RECENT_SLOTS 64

static inline size_t recent_bucket(const uint8_t *p, size_t n) {
    return (n + (n ? 7 * (size_t)p[n - 1] : 0)) & (RECENT_SLOTS - 1);
}

#endif
