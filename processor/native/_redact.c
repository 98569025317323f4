/* The redaction stage's traces pass in one walk over a serialized ExportTraceServiceRequest.
 *
 * Why: the Python message walk (processor/redaction/redactor.py, this scanner's fallback and reference) pays
 * protobuf parsing and per-attribute Python work (several us per span). Here every attribute (resource, scope, span, event, link), span name, status message
 * and event name is looked at in C: a key table (filled once per distinct key by a Python callback that runs
 * the rule matching) says what the key's rule does, a cheap prefilter derived from
 * processor/redaction/detectors.py:possible_kinds says "no detector can match this value" for almost every
 * value, and the rest goes to Python callbacks (memoised by the bytes they were given, bounded). Drops, masks,
 * keyed pseudonyms (HMAC-SHA256 by OpenSSL's libcrypto, the library Python's hmac uses, loaded at import so the
 * build needs no OpenSSL headers; without it the Python pseudonymiser, memoised per value) and IPv4
 * generalisation are done here; everything else is
 * decided by the same Python code as the message walk. The output is the input with the edits, every
 * enclosing length prefix fixed; when nothing changes the input bytes object itself is returned.
 *
 * Scanner(key_action, kv_outcome, text_outcome, kinds_mask, summary, pseudonym, hmac_key, pseudonym_length,
 *         n_rules, memo_max)
 *   key_action(key: bytes) -> (code, rule_id, arg): code is one of the A_* values below; arg the mask text
 *       (bytes) for A_MASK, the prefix (bytes) for A_PSEUDO, the generalising function for A_GEN / A_GEN_IP.
 *   kv_outcome(kv: bytes) -> None (leave it) | False (not understood: give up) |
 *       (replacement KeyValue bytes or None to drop it, values changed, rule ids, detector ids)
 *   text_outcome(text: bytes) -> None | False | (replacement text bytes, detector ids)
 * Scanner.redact(buf) -> None (bytes this scanner does not understand: use the Python path) or
 *   (output bytes, spans touched, rule hit counts or None, detector hit counts or None)
 *   pseudonym(value: bytes) -> str: the digest part of a pseudonym (the rule's prefix goes in front), or None
 *       when no rule pseudonymises; hmac_key and pseudonym_length: the same digest's key and length, computed
 *       here with libcrypto (pseudonym is then asked only when libcrypto is not there).
 * libcrypto: True when OpenSSL's HMAC is used (RECOHOP_REDACT_NO_LIBCRYPTO=1 turns it off, for tests).
 * possible_kinds(text: bytes) -> bitmask of detector kinds that could match, or None when not valid UTF-8.
 * The memo tables are indexed by a keyed hash (hash.h), so no client can make their lookups slow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "hash.h"
#include "wire.h"

/* The key of the memo tables (hash.h), drawn at import. */
static hash_key memo_key;

/* ------------------------------------------------------------------ OpenSSL's HMAC-SHA256 */

#include <dlfcn.h>

/* OpenSSL's HMAC API (stable in 1.1 and 3.x), resolved from libcrypto at import: no hand-written crypto, and no
 * build dependency on OpenSSL's headers. Opaque types only. */
typedef struct recohop_hmac_ctx hmac_ctx;
typedef struct recohop_evp_md evp_md;
static struct {
    int loaded;
    const evp_md *(*sha256)(void);
    hmac_ctx *(*ctx_new)(void);
    void (*ctx_free)(hmac_ctx *);
    int (*init)(hmac_ctx *, const void *, int, const evp_md *, void *);
    int (*update)(hmac_ctx *, const unsigned char *, size_t);
    int (*final)(hmac_ctx *, unsigned char *, unsigned int *);
    int (*copy)(hmac_ctx *, hmac_ctx *);
} ssl;

static void libcrypto_load(void) {
    const char *env = getenv("RECOHOP_REDACT_NO_LIBCRYPTO");
    if (env && *env && strcmp(env, "0") != 0) return;
    static const char *names[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so", NULL};
    void *lib = NULL;
    for (int i = 0; names[i] && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) return;
    *(void **)&ssl.sha256 = dlsym(lib, "EVP_sha256");
    *(void **)&ssl.ctx_new = dlsym(lib, "HMAC_CTX_new");
    *(void **)&ssl.ctx_free = dlsym(lib, "HMAC_CTX_free");
    *(void **)&ssl.init = dlsym(lib, "HMAC_Init_ex");
    *(void **)&ssl.update = dlsym(lib, "HMAC_Update");
    *(void **)&ssl.final = dlsym(lib, "HMAC_Final");
    *(void **)&ssl.copy = dlsym(lib, "HMAC_CTX_copy");
    ssl.loaded = ssl.sha256 && ssl.ctx_new && ssl.ctx_free && ssl.init && ssl.update && ssl.final && ssl.copy;
}

/* A context keyed once (the key's pad blocks hashed); NULL when libcrypto is not there or refuses. */
static hmac_ctx *hmac_keyed(const uint8_t *key, size_t n) {
    if (!ssl.loaded || n > INT32_MAX) return NULL;
    hmac_ctx *ctx = ssl.ctx_new();
    if (ctx && !ssl.init(ctx, key, (int)n, ssl.sha256(), NULL)) {
        ssl.ctx_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* Detector kinds, in processor/redaction/detectors.py:KINDS order. */
enum { K_BEARER, K_JWT, K_EMAIL, K_IBAN, K_CARD, K_IPV6, K_IPV4, K_PHONE, K_SECRET, K_SSN, K_MAC, K_GEO, K_COOKIE,
       K_CUSTOM, N_KINDS };
/* Not a kind but a prefilter bit: the text may hold an encoded form (%xx, &entity;, non-ASCII such as full-width
 * digits) that the detectors decode and rescan. */
#define K_ENCODED N_KINDS

/* What a key's rule does (key_action codes). */
enum { A_CLEAN, A_SCAN, A_DROP, A_MASK, A_PSEUDO, A_GEN, A_GEN_IP, A_OTHER, N_ACTIONS };

#define NEST_MAX 16       /* nested kvlists/arrays deeper than this go to Python (which cuts at 64) */
#define MEMO_ITEM_MAX 512 /* longer values are not memoised (bounded memory) */
#define KEYS_MAX 16384

/* ------------------------------------------------------------------ the detector prefilter */

/* Byte classes for the prefilter. C_CTX: bytes whose meaning depends on their neighbours ('e'/'E' may start a
 * JWT or "bearer", 'A', 'B', '_', '-' a secret's marker); the prefilter's only branches on ASCII text. The
 * others ('@', ':', '.', '=', '%', '&', digits, '-') are counted without a branch through byte_lanes. */
enum { C_DIGIT = 1, C_LOWER = 2, C_UPPER = 4, C_OTHER = 8, C_CTX = 16, C_HIGH = 32, C_AT = 64, C_EQ = 128,
       C_ENC = 256 };

/* 16-bit counter lanes of one uint64: digits, colons, dots, dashes (flushed before any lane can overflow). */
#define LANE_DIGIT 0
#define LANE_COLON 16
#define LANE_DOT 32
#define LANE_DASH 48
#define LANE_CHUNK 65535

static uint16_t byte_class[256];
static uint64_t byte_lanes[256];

static void init_byte_class(void) {
    for (int b = 0; b < 256; b++) {
        uint16_t c;
        uint64_t lane = 0;
        if (b >= 0x80) c = C_HIGH;
        else if (b >= '0' && b <= '9') c = C_DIGIT;
        else if (b >= 'a' && b <= 'z') c = C_LOWER;
        else if (b >= 'A' && b <= 'Z') c = C_UPPER;
        else if (b == '-' || b == '_') c = 0;
        else c = C_OTHER;
        if (b == 'e' || b == 'E' || b == 'A' || b == 'B' || b == '_' || b == '-') c |= C_CTX;
        if (b == '@') c |= C_AT;
        if (b == '=') c |= C_EQ;
        if (b == '%' || b == '&') c |= C_ENC;
        if (b >= '0' && b <= '9') lane = 1ULL << LANE_DIGIT;
        if (b == ':') lane = 1ULL << LANE_COLON;
        if (b == '.') lane = 1ULL << LANE_DOT;
        if (b == '-') lane = 1ULL << LANE_DASH;
        byte_class[b] = c;
        byte_lanes[b] = lane;
    }
}

/* 1 when p[i] ('_', '-', 'A' or 'B') starts or ends a secret's marker (detectors.py: _SECRET_MARK). */
static int secret_mark(const uint8_t *p, size_t n, size_t i) {
    uint8_t b = p[i];
    if (b == 'A') return n - i >= 4 && (memcmp(p + i + 1, "KIA", 3) == 0 || memcmp(p + i + 1, "SIA", 3) == 0);
    if (b == 'B') return n - i >= 5 && (memcmp(p + i + 1, "asic", 4) == 0 || memcmp(p + i + 1, "ASIC", 4) == 0);
    if (b == '-') return i >= 4 && memcmp(p + i - 4, "xox", 3) == 0 && p[i - 1] && memchr("abposr", p[i - 1], 6);
    /* '_' */
    if (i >= 3 && p[i - 3] == 'g' && p[i - 2] == 'h' && p[i - 1] && memchr("pousr", p[i - 1], 5)) return 1;
    if (i >= 6 && memcmp(p + i - 6, "github", 6) == 0 && n - i >= 5 && memcmp(p + i + 1, "pat_", 4) == 0)
        return 1;
    return i >= 2 && (p[i - 2] == 's' || p[i - 2] == 'r') && p[i - 1] == 'k' && n - i >= 6 &&
           memcmp(p + i + 1, "live_", 5) == 0;
}

/* Bitmask of the kinds possible_kinds() in detectors.py could report for this UTF-8 text (a superset: exact
 * for ASCII, more kinds for other text), 0 when the text is shorter than 3 characters (Detectors.scan skips
 * those); -1 when the bytes are not valid UTF-8. */
static int possible(const uint8_t *p, size_t n) {
    size_t digits = 0, colons = 0, dots = 0, dashes = 0, chars = n;
    int jwt = 0, bearer = 0, secret = 0;
    unsigned seen = 0;
    uint64_t lanes = 0;
    size_t i = 0, flush = n < LANE_CHUNK ? n : LANE_CHUNK;
    for (;;) {
        if (i >= flush) {
            digits += (lanes >> LANE_DIGIT) & 0xFFFF;
            colons += (lanes >> LANE_COLON) & 0xFFFF;
            dots += (lanes >> LANE_DOT) & 0xFFFF;
            dashes += (lanes >> LANE_DASH) & 0xFFFF;
            lanes = 0;
            if (i >= n) break;
            flush = n - i < LANE_CHUNK ? n : i + LANE_CHUNK;
        }
        uint8_t b = p[i];
        unsigned c = byte_class[b];
        seen |= c;
        lanes += byte_lanes[b];
        if (__builtin_expect(!(c & (C_CTX | C_HIGH)), 1)) {
            i++;
            continue;
        }
        if (c & C_CTX) {
            if (b == 'e' || b == 'E') {
                if (b == 'e' && n - i >= 3 && p[i + 1] == 'y' && p[i + 2] == 'J') jwt = 1;
                else if (n - i >= 5 && memcmp(p + i + 1, b == 'e' ? "arer" : "ARER", 4) == 0) bearer = 1;
            } else if (!secret) {
                secret = secret_mark(p, n, i);
            }
            i++;
            continue;
        }
        /* a multi-byte sequence: validated like Python's strict UTF-8 decoder */
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b == 0xE0) { need = 2; lo = 0xA0; }
        else if (b >= 0xE1 && b <= 0xEC) need = 2;
        else if (b == 0xED) { need = 2; hi = 0x9F; }
        else if (b >= 0xEE && b <= 0xEF) need = 2;
        else if (b == 0xF0) { need = 3; lo = 0x90; }
        else if (b >= 0xF1 && b <= 0xF3) need = 3;
        else if (b == 0xF4) { need = 3; hi = 0x8F; }
        else return -1;
        if (n - i - 1 < need) return -1;
        if (p[i + 1] < lo || p[i + 1] > hi) return -1;
        for (size_t k = 2; k <= need; k++)
            if (p[i + k] < 0x80 || p[i + k] > 0xBF) return -1;
        chars -= need; /* one character, need + 1 bytes */
        i += need + 1;
        if (i > flush) flush = i; /* a sequence crossing the chunk end: flush at once (lanes hold < 2^16) */
    }
    if (chars < 3) return 0;
    int kinds = 0;
    if (seen & C_AT) kinds |= 1 << K_EMAIL;
    if (jwt) kinds |= 1 << K_JWT;
    if (bearer) kinds |= 1 << K_BEARER;
    if (colons >= 2) kinds |= 1 << K_IPV6;
    if (colons >= 5 || dashes >= 5) kinds |= 1 << K_MAC;
    if (seen & C_EQ) kinds |= 1 << K_SECRET | 1 << K_COOKIE;
    if (secret) kinds |= 1 << K_SECRET;
    kinds |= 1 << K_CUSTOM; /* operator patterns: no prefilter (only enabled when configured) */
    int ascii = !(seen & C_HIGH);
    if ((seen & C_ENC) || !ascii) kinds |= 1 << K_ENCODED;
    int lower = ascii && (seen & C_LOWER) && !(seen & C_UPPER); /* non-ASCII: assume not (more kinds) */
    /* detectors.py returns early for one lowercase token of word characters and dashes */
    if (lower && !(seen & C_OTHER)) return kinds;
    if (digits >= 7) {
        kinds |= 1 << K_PHONE;
        if (digits >= 9) kinds |= 1 << K_SSN;
        if (digits >= 13) kinds |= 1 << K_CARD;
    }
    if (digits >= 8 && dots >= 2) kinds |= 1 << K_GEO;
    if (digits >= 4 && dots >= 3) kinds |= 1 << K_IPV4;
    if (digits >= 2 && chars >= 15 && !lower) kinds |= 1 << K_IBAN;
    return kinds;
}

/* ------------------------------------------------------------------ bounded memo tables */

/* A memoised answer in C memory, so a hit needs no Python object (the walk runs without the GIL). */
enum { O_LEAVE, O_REPLACE, O_DROP };
typedef struct {
    int kind;        /* O_LEAVE: nothing to change; O_REPLACE: rep is the new text / KeyValue; O_DROP */
    uint8_t *rep;    /* owned (PyMem_Raw), or NULL: also a key's mask text or prefix, a pseudonym's digest */
    size_t replen;
    long changed;    /* values changed (kv outcomes) */
    int32_t *ids;    /* owned (PyMem_Raw): n_rule_ids rule ids, then n_det_ids detector ids */
    uint32_t n_rule_ids, n_det_ids;
} outcome;

static void outcome_free(outcome *o) {
    PyMem_RawFree(o->rep);
    PyMem_RawFree(o->ids);
    memset(o, 0, sizeof *o);
}

typedef struct {
    uint64_t hash;
    uint8_t *key;    /* owned copy (PyMem_Raw); NULL: empty slot */
    size_t keylen;
    PyObject *value; /* owned, or NULL: only the key table holds objects (a generalisation's function) */
    int code, rule;
    outcome o;
} slot;

/* Tables are read without the GIL during a walk, and written only by the thread running the walk (the walk holds
 * the scanner's lock, so there is one at a time: see redact()). A table whose slots hold a Python
 * object (the key table) is written with the GIL held, so the garbage collector's traverse never sees it
 * change; the others hold none and are not traversed. */
typedef struct {
    slot *slots;
    size_t mask; /* capacity - 1 */
    size_t count;
    size_t max;
} table;

/* Drops every entry (with the GIL held when the table holds Python objects). */
static void tab_clear(table *t) {
    if (!t->slots) return;
    for (size_t i = 0; i <= t->mask; i++) {
        slot *s = &t->slots[i];
        if (!s->key) continue;
        PyMem_RawFree(s->key);
        s->key = NULL;
        Py_CLEAR(s->value);
        outcome_free(&s->o);
    }
    t->count = 0;
}

static void tab_free(table *t) {
    tab_clear(t);
    PyMem_RawFree(t->slots);
    t->slots = NULL;
}

static slot *tab_find(const table *t, const uint8_t *p, size_t n, uint64_t h) {
    if (!t->slots) return NULL;
    size_t i = (size_t)h & t->mask;
    for (;;) {
        slot *s = &t->slots[i];
        if (!s->key) return NULL;
        if (s->hash == h && s->keylen == n && memcmp(s->key, p, n) == 0) return s;
        i = (i + 1) & t->mask;
    }
}

/* A new slot for bytes p[:n] (not present): the table is cleared first when full. NULL when out of memory (no
 * exception set: the caller may not hold the GIL). The slot is valid until the next insert. */
static slot *tab_insert(table *t, const uint8_t *p, size_t n, uint64_t h) {
    if (t->count >= t->max) tab_clear(t);
    if (!t->slots || (t->count + 1) * 2 > t->mask + 1) {
        size_t cap = t->slots ? (t->mask + 1) * 2 : 64;
        slot *fresh = PyMem_RawCalloc(cap, sizeof(slot));
        if (!fresh) return NULL;
        if (t->slots) {
            for (size_t i = 0; i <= t->mask; i++) {
                slot *s = &t->slots[i];
                if (!s->key) continue;
                size_t j = (size_t)s->hash & (cap - 1);
                while (fresh[j].key) j = (j + 1) & (cap - 1);
                fresh[j] = *s;
            }
            PyMem_RawFree(t->slots);
        }
        t->slots = fresh;
        t->mask = cap - 1;
    }
    uint8_t *key = PyMem_RawMalloc(n ? n : 1);
    if (!key) return NULL;
    if (n) memcpy(key, p, n);
    size_t i = (size_t)h & t->mask;
    while (t->slots[i].key) i = (i + 1) & t->mask;
    slot *s = &t->slots[i];
    memset(s, 0, sizeof *s);
    s->hash = h;
    s->key = key;
    s->keylen = n;
    t->count++;
    return s;
}

/* ------------------------------------------------------------------ the scanner object */

typedef struct {
    const uint8_t *p; /* into the request being walked */
    size_t n;
} text_ref;

typedef struct {
    size_t start, end; /* replaced range of the input */
    size_t off, len;   /* replacement in scratch */
} edit;

typedef struct {
    PyObject_HEAD
    PyObject *key_action, *kv_outcome, *text_outcome, *pseudonym;
    hmac_ctx *hmac_template, *hmac_work; /* keyed once; the work context is a copy per value */
    Py_ssize_t pseudonym_length;
    int kinds_mask, summary;
    int busy; /* redact() calls in progress (changed with the GIL held) */
    Py_ssize_t n_rules;
    table keys, kvs, texts, pseudos;
    /* per call */
    const uint8_t *buf;
    const uint8_t *ctx; /* the span (or resource spans) an attribute belongs to: where its raw value may recur */
    size_t ctx_len;
    /* the Resource and InstrumentationScope of the spans walked: a span's own identities leave them too */
    const uint8_t *res, *scope;
    size_t res_len, scope_len;
    int in_span;
    edit *edits;
    size_t n_edits, cap_edits;
    uint8_t *scratch;
    size_t scratch_len, scratch_cap;
    Py_ssize_t delta;
    Py_ssize_t *rule_hits;
    Py_ssize_t detector_hits[N_KINDS];
    Py_ssize_t spans_touched;
    /* per call, per `recent_bucket`: the key slot last found (emptied whenever the key table takes an entry,
     * which may move slots), and the text the prefilter last cleared (a compare costs a fraction of its pass) */
    slot *recent_keys[RECENT_SLOTS];
    text_ref clean_texts[RECENT_SLOTS];
    PyThreadState *released; /* during a walk: the thread state saved while the GIL is released, else NULL */
    PyThread_type_lock walk_lock; /* held by the thread walking (see redact()); NULL before __init__ */
} Scanner;

/* The walk runs without the GIL and takes it back only where Python is needed (a memo miss asking the Python
 * rules and detectors, an error to raise): gil_take before touching any Python object, gil_drop after. Both are
 * no-ops when the GIL is already in that state, so an error path may leave it taken (redact() takes it back at
 * the end in any case). */
static inline void gil_take(Scanner *sc) {
    if (sc->released) {
        PyEval_RestoreThread(sc->released);
        sc->released = NULL;
    }
}

static inline void gil_drop(Scanner *sc) {
    if (!sc->released) sc->released = PyEval_SaveThread();
}

/* MemoryError, with the GIL taken first; -1 (the walkers' error). */
static int no_memory(Scanner *sc) {
    gil_take(sc);
    PyErr_NoMemory();
    return -1;
}

static int scratch_reserve(Scanner *sc, size_t more) {
    if (sc->scratch_len + more <= sc->scratch_cap) return 1;
    size_t cap = sc->scratch_cap ? sc->scratch_cap : 4096;
    while (cap < sc->scratch_len + more) cap *= 2;
    uint8_t *p = PyMem_RawRealloc(sc->scratch, cap);
    if (!p) {
        no_memory(sc);
        return 0;
    }
    sc->scratch = p;
    sc->scratch_cap = cap;
    return 1;
}

static int put(Scanner *sc, const void *p, size_t n) {
    if (!scratch_reserve(sc, n)) return 0;
    if (n) memcpy(sc->scratch + sc->scratch_len, p, n);
    sc->scratch_len += n;
    return 1;
}

static int put_varint(Scanner *sc, uint64_t v) {
    if (!scratch_reserve(sc, 10)) return 0;
    sc->scratch_len += wire_put_varint(sc->scratch + sc->scratch_len, v);
    return 1;
}

/* Replace input[start:end) with scratch[off:] (what was put since off). */
static int add_edit(Scanner *sc, const uint8_t *start, const uint8_t *end, size_t off) {
    if (sc->n_edits == sc->cap_edits) {
        size_t cap = sc->cap_edits ? sc->cap_edits * 2 : 64;
        edit *e = PyMem_RawRealloc(sc->edits, cap * sizeof(edit));
        if (!e) {
            no_memory(sc);
            return 0;
        }
        sc->edits = e;
        sc->cap_edits = cap;
    }
    edit *e = &sc->edits[sc->n_edits++];
    e->start = (size_t)(start - sc->buf);
    e->end = (size_t)(end - sc->buf);
    e->off = off;
    e->len = sc->scratch_len - off;
    sc->delta += (Py_ssize_t)e->len - (Py_ssize_t)(e->end - e->start);
    return 1;
}

/* Where a length-delimited field's length varint starts (after its tag, however it was encoded). */
static const uint8_t *after_tag(const wire_field *f) {
    const uint8_t *p = f->start;
    while (*p & 0x80) p++; /* the tag was read by wire_next: bounded */
    return p + 1;
}

/* Replace the whole field f by: its own tag, then a length-delimited payload put by the caller since off
 * (payload_off: where the payload starts in scratch; the tag and length are put in front of it). */
static int replace_field(Scanner *sc, const wire_field *f, size_t payload_off) {
    /* scratch: [payload]; rebuild as [tag][len][payload] at a new offset */
    size_t plen = sc->scratch_len - payload_off;
    const uint8_t *lenstart = after_tag(f);
    size_t taglen = (size_t)(lenstart - f->start);
    if (!scratch_reserve(sc, taglen + 10 + plen)) return 0;
    size_t off = sc->scratch_len;
    memcpy(sc->scratch + sc->scratch_len, f->start, taglen);
    sc->scratch_len += taglen;
    sc->scratch_len += wire_put_varint(sc->scratch + sc->scratch_len, plen);
    memcpy(sc->scratch + sc->scratch_len, sc->scratch + payload_off, plen);
    sc->scratch_len += plen;
    return add_edit(sc, f->start, f->data + f->len, off);
}

static int delete_field(Scanner *sc, const wire_field *f) {
    return add_edit(sc, f->start, f->data + f->len, sc->scratch_len);
}

/* Put a KeyValue payload {key, value: {string_value: s1 + s2}} into scratch. */
static int put_kv_string(Scanner *sc, const uint8_t *key, size_t keylen, const uint8_t *s1, size_t n1,
                         const uint8_t *s2, size_t n2) {
    size_t slen = n1 + n2;
    size_t anylen = 1 + wire_varint_size(slen) + slen;
    uint8_t t;
    t = 0x0A;
    if (!put(sc, &t, 1) || !put_varint(sc, keylen) || !put(sc, key, keylen)) return 0;
    t = 0x12;
    if (!put(sc, &t, 1) || !put_varint(sc, anylen)) return 0;
    t = 0x0A;
    return put(sc, &t, 1) && put_varint(sc, slen) && put(sc, s1, n1) && put(sc, s2, n2);
}

/* Appends the ints of tuple ids (each in [0, limit)) to o->ids. 1, or 0 with an exception set (GIL held). */
static int ids_append(outcome *o, PyObject *ids, Py_ssize_t limit) {
    if (!PyTuple_Check(ids)) {
        PyErr_SetString(PyExc_TypeError, "hit ids must be a tuple of ints");
        return 0;
    }
    Py_ssize_t add = PyTuple_GET_SIZE(ids), have = (Py_ssize_t)o->n_rule_ids + o->n_det_ids;
    if (!add) return 1;
    if (add > INT32_MAX - have) {
        PyErr_SetString(PyExc_ValueError, "too many hit ids");
        return 0;
    }
    int32_t *grown = PyMem_RawRealloc(o->ids, (size_t)(have + add) * sizeof(int32_t));
    if (!grown) {
        PyErr_NoMemory();
        return 0;
    }
    o->ids = grown;
    for (Py_ssize_t i = 0; i < add; i++) {
        Py_ssize_t id = PyLong_AsSsize_t(PyTuple_GET_ITEM(ids, i));
        if (id == -1 && PyErr_Occurred()) return 0;
        if (id < 0 || id >= limit) {
            PyErr_SetString(PyExc_ValueError, "hit id out of range");
            return 0;
        }
        grown[have + i] = (int32_t)id;
    }
    return 1;
}

/* o->rep = a copy of p[:n]. 1, or 0 with MemoryError (GIL held). */
static int rep_copy(outcome *o, const void *p, size_t n) {
    o->rep = PyMem_RawMalloc(n ? n : 1);
    if (!o->rep) {
        PyErr_NoMemory();
        return 0;
    }
    if (n) memcpy(o->rep, p, n);
    o->replen = n;
    return 1;
}

/* A kv_outcome answer (None or (KeyValue bytes or None, changed, rule ids, detector ids)) into o. 1, or 0 with an
 * exception set (GIL held; o may hold parts: outcome_free it). */
static int parse_kv_outcome(Scanner *sc, PyObject *res, outcome *o) {
    if (res == Py_None) return 1;
    PyObject *kv, *rules, *dets;
    long n;
    if (!PyArg_ParseTuple(res, "OlOO", &kv, &n, &rules, &dets)) return 0;
    if (kv == Py_None) {
        o->kind = O_DROP;
    } else {
        if (!PyBytes_Check(kv)) {
            PyErr_SetString(PyExc_TypeError, "replacement KeyValue must be bytes");
            return 0;
        }
        o->kind = O_REPLACE;
        if (!rep_copy(o, PyBytes_AS_STRING(kv), (size_t)PyBytes_GET_SIZE(kv))) return 0;
    }
    o->changed = n;
    if (!ids_append(o, rules, sc->n_rules)) return 0;
    o->n_rule_ids = (uint32_t)PyTuple_GET_SIZE(rules);
    if (!ids_append(o, dets, N_KINDS)) return 0;
    o->n_det_ids = (uint32_t)PyTuple_GET_SIZE(dets);
    return 1;
}

/* A text_outcome answer (None or (text bytes, detector ids)) into o. 1, or 0 with an exception set. */
static int parse_text_outcome(Scanner *sc, PyObject *res, outcome *o) {
    if (res == Py_None) return 1;
    PyObject *text, *dets;
    if (!PyArg_ParseTuple(res, "SO", &text, &dets)) return 0;
    o->kind = O_REPLACE;
    o->changed = 1;
    if (!rep_copy(o, PyBytes_AS_STRING(text), (size_t)PyBytes_GET_SIZE(text)) || !ids_append(o, dets, N_KINDS))
        return 0;
    o->n_det_ids = (uint32_t)PyTuple_GET_SIZE(dets);
    return 1;
}

/* The outcome's hits into the request's counts (ids were range-checked when parsed). */
static void count_outcome(Scanner *sc, const outcome *o) {
    for (uint32_t i = 0; i < o->n_rule_ids; i++) sc->rule_hits[o->ids[i]]++;
    for (uint32_t i = 0; i < o->n_det_ids; i++) sc->detector_hits[o->ids[o->n_rule_ids + i]]++;
}

/* ------------------------------------------------------------------ message parts */

typedef struct {
    const uint8_t *key, *val;
    size_t keylen, vallen;
} kv_parts;

/* 1 when the KeyValue is exactly one key (field 1) and one value (field 2), in either order: protobuf writes
 * the key first, otelcol (pdata) the value first; both mean the same. Anything else goes the generic way. */
static int split_kv(const uint8_t *p, size_t n, kv_parts *kp) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int seen_key = 0, seen_value = 0;
    for (int i = 0; i < 2; i++) {
        if (wire_next(&c, &f) != 1 || f.wtype != 2) return 0;
        if (f.number == 1 && !seen_key) {
            seen_key = 1;
            kp->key = f.data;
            kp->keylen = f.len;
        } else if (f.number == 2 && !seen_value) {
            seen_value = 1;
            kp->val = f.data;
            kp->vallen = f.len;
        } else {
            return 0;
        }
    }
    return wire_next(&c, &f) == 0;
}

enum { V_EMPTY, V_STRING, V_BOOL, V_INT, V_DOUBLE, V_ARRAY, V_KVLIST, V_BYTES };

typedef struct {
    int kind;
    const uint8_t *data;
    size_t len;
    uint64_t value; /* V_BOOL, V_INT, V_DOUBLE */
} any_parts;

/* 1 when the AnyValue holds at most one field, of a known kind with its proper wire type. */
static int split_any(const uint8_t *p, size_t n, any_parts *av) {
    static const uint8_t wtypes[8] = {0, 2, 0, 0, 1, 2, 2, 2};
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r = wire_next(&c, &f);
    if (r == 0) {
        av->kind = V_EMPTY;
        av->data = p;
        av->len = 0;
        return 1;
    }
    if (r < 0 || f.number < 1 || f.number > 7 || f.wtype != wtypes[f.number]) return 0;
    av->kind = (int)f.number;
    av->data = f.wtype == 2 ? f.data : p;
    av->len = f.wtype == 2 ? f.len : 0;
    av->value = f.wtype == 2 ? 0 : f.value;
    return wire_next(&c, &f) == 0;
}

/* ------------------------------------------------------------------ callbacks, memoised */

/* What key_action said about a key (valid until the next key insert). */
typedef struct {
    int code, rule;
    const uint8_t *text; /* A_MASK: the mask text; A_PSEUDO: the prefix */
    size_t textlen;
    PyObject *fn;        /* A_GEN / A_GEN_IP: the generalising function (borrowed; use it with the GIL) */
} key_rule;

/* The key's rule, memoised per key (Python only for a key seen for the first time). 1, or -1 on error. */
static int key_action(Scanner *sc, const uint8_t *key, size_t n, key_rule *kr) {
    size_t bucket = recent_bucket(key, n);
    slot *s = sc->recent_keys[bucket];
    if (s && s->keylen == n && memcmp(s->key, key, n) == 0) goto found;
    uint64_t h = siphash13(&memo_key, key, n);
    s = tab_find(&sc->keys, key, n, h);
    if (!s) {
        gil_take(sc);
        PyObject *res = PyObject_CallFunction(sc->key_action, "y#", (const char *)key, (Py_ssize_t)n);
        if (!res) return -1;
        int c, r;
        PyObject *a;
        if (!PyArg_ParseTuple(res, "iiO", &c, &r, &a)) {
            Py_DECREF(res);
            return -1;
        }
        int bad = c < 0 || c >= N_ACTIONS || r < 0 || r >= sc->n_rules ||
                  ((c == A_MASK || c == A_PSEUDO) && !PyBytes_Check(a)) ||
                  ((c == A_GEN || c == A_GEN_IP) && !PyCallable_Check(a));
        if (bad) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_ValueError, "key_action returned an unusable action");
            return -1;
        }
        outcome o = {0};
        if ((c == A_MASK || c == A_PSEUDO) && !rep_copy(&o, PyBytes_AS_STRING(a), (size_t)PyBytes_GET_SIZE(a))) {
            Py_DECREF(res);
            return -1;
        }
        memset(sc->recent_keys, 0, sizeof sc->recent_keys); /* the insert may clear or move the table */
        s = tab_insert(&sc->keys, key, n, h);
        if (!s) {
            outcome_free(&o);
            Py_DECREF(res);
            return no_memory(sc);
        }
        s->value = Py_NewRef(a);
        s->code = c;
        s->rule = r;
        s->o = o;
        Py_DECREF(res);
        gil_drop(sc);
    }
    sc->recent_keys[bucket] = s;
found:
    kr->code = s->code;
    kr->rule = s->rule;
    kr->text = s->o.rep;
    kr->textlen = s->o.replen;
    kr->fn = s->value;
    return 1;
}

/* The outcome for p[:n]: memoised in t (values up to MEMO_ITEM_MAX bytes), else fn's answer (asked with the GIL
 * taken, parsed by parse). 1 with *o set (a slot's, valid until the next insert into t, or tmp's, which the
 * caller frees with outcome_free), 0 when fn answered False (give up), -1 on error. */
static int memo_outcome(Scanner *sc, table *t, PyObject *fn, int (*parse)(Scanner *, PyObject *, outcome *),
                        const uint8_t *p, size_t n, const outcome **o, outcome *tmp) {
    uint64_t h = 0;
    if (n <= MEMO_ITEM_MAX) {
        h = siphash13(&memo_key, p, n);
        slot *s = tab_find(t, p, n, h);
        if (s) {
            *o = &s->o;
            return 1;
        }
    }
    gil_take(sc);
    PyObject *res = PyObject_CallFunction(fn, "y#", (const char *)p, (Py_ssize_t)n);
    if (!res) return -1;
    if (res != Py_None && res != Py_False && !PyTuple_Check(res)) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_TypeError, "outcome callbacks return None, False or a tuple");
        return -1;
    }
    if (res == Py_False) {
        Py_DECREF(res);
        gil_drop(sc);
        return 0;
    }
    memset(tmp, 0, sizeof *tmp);
    int ok = parse(sc, res, tmp);
    Py_DECREF(res);
    if (!ok) {
        outcome_free(tmp);
        return -1;
    }
    *o = tmp;
    if (n <= MEMO_ITEM_MAX) {
        slot *s = tab_insert(t, p, n, h);
        if (!s) {
            outcome_free(tmp);
            return no_memory(sc);
        }
        s->o = *tmp;
        memset(tmp, 0, sizeof *tmp);
        *o = &s->o;
    }
    gil_drop(sc);
    return 1;
}

/* OpenSSL's HMAC-SHA256 of p[:n] in hex, cut to the pseudonym length, into hex; 0 when libcrypto is not there or
 * fails. Needs no GIL (the work context is the scanner's, used by the thread running the walk). */
static int libcrypto_digest(Scanner *sc, const uint8_t *p, size_t n, char hex[64]) {
    unsigned char digest[64];
    unsigned int len = 0;
    if (!sc->hmac_template || !ssl.copy(sc->hmac_work, sc->hmac_template) || !ssl.update(sc->hmac_work, p, n) ||
        !ssl.final(sc->hmac_work, digest, &len) || len != 32)
        return 0;
    static const char hexdigits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = hexdigits[digest[i] >> 4];
        hex[2 * i + 1] = hexdigits[digest[i] & 15];
    }
    return 1;
}

/* The digest part of the pseudonym of value p[:n] into out (*outlen bytes, at most 64), memoised per value (user
 * ids repeat on a trace's spans): libcrypto's without the GIL, or else the Python pseudonymiser's. 1, or -1 on
 * error. */
static int pseudonym_digest(Scanner *sc, const uint8_t *p, size_t n, char out[64], size_t *outlen) {
    table *t = &sc->pseudos;
    uint64_t h = 0;
    if (n <= MEMO_ITEM_MAX) {
        h = siphash13(&memo_key, p, n);
        slot *s = tab_find(t, p, n, h);
        if (s) {
            memcpy(out, s->o.rep, s->o.replen);
            *outlen = s->o.replen;
            return 1;
        }
    }
    if (libcrypto_digest(sc, p, n, out)) {
        *outlen = (size_t)sc->pseudonym_length;
    } else {
        gil_take(sc);
        PyObject *res = PyObject_CallFunction(sc->pseudonym, "y#", (const char *)p, (Py_ssize_t)n);
        if (!res) return -1;
        Py_ssize_t len;
        const char *d = PyUnicode_Check(res) ? PyUnicode_AsUTF8AndSize(res, &len) : NULL;
        if (!d || len > 64) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "pseudonym() returns str of up to 64 bytes");
            Py_DECREF(res);
            return -1;
        }
        memcpy(out, d, (size_t)len);
        *outlen = (size_t)len;
        Py_DECREF(res);
        gil_drop(sc);
    }
    if (n <= MEMO_ITEM_MAX) {
        /* this table holds no Python object: it is written without the GIL */
        uint8_t *copy = PyMem_RawMalloc(*outlen ? *outlen : 1);
        slot *s = copy ? tab_insert(t, p, n, h) : NULL;
        if (!s) {
            PyMem_RawFree(copy);
            return no_memory(sc);
        }
        memcpy(copy, out, *outlen);
        s->o.rep = copy;
        s->o.replen = *outlen;
    }
    return 1;
}

/* ------------------------------------------------------------------ texts and attributes */

/* 1 when the prefilter cleared these very bytes earlier in this call (no detector the rules use can hit them and
 * they are UTF-8), else 0 with *bucket set for `remember_clean`. */
static inline int known_clean(Scanner *sc, const uint8_t *p, size_t n, size_t *bucket) {
    *bucket = recent_bucket(p, n);
    const text_ref *t = &sc->clean_texts[*bucket];
    return t->p && t->n == n && memcmp(t->p, p, n) == 0;
}

static inline void remember_clean(Scanner *sc, const uint8_t *p, size_t n, size_t bucket) {
    sc->clean_texts[bucket].p = p;
    sc->clean_texts[bucket].n = n;
}

/* A text field (span name, status message, event name): detectors through text_outcome when the prefilter
 * lets it through. 1 ok, 0 give up, -1 error. */
static int do_text(Scanner *sc, const wire_field *f, long *changed) {
    size_t bucket;
    if (known_clean(sc, f->data, f->len, &bucket)) return 1;
    int kinds = possible(f->data, f->len);
    if (kinds < 0) return 0; /* not UTF-8: the Python path decides (upb refuses it) */
    if (!(kinds & sc->kinds_mask)) {
        remember_clean(sc, f->data, f->len, bucket);
        return 1;
    }
    const outcome *o;
    outcome tmp = {0};
    int rc = memo_outcome(sc, &sc->texts, sc->text_outcome, parse_text_outcome, f->data, f->len, &o, &tmp);
    if (rc <= 0) return rc;
    if (o->kind == O_REPLACE) {
        size_t off = sc->scratch_len;
        if (!put(sc, o->rep, o->replen) || !replace_field(sc, f, off)) rc = -1;
        else {
            count_outcome(sc, o);
            *changed += 1;
        }
    }
    outcome_free(&tmp);
    return rc;
}

/* Apply a kv_outcome to the attribute field f. */
static int apply_outcome(Scanner *sc, const wire_field *f, const outcome *o, long *changed) {
    if (o->kind == O_LEAVE) return 1;
    if (o->kind == O_DROP) {
        if (!delete_field(sc, f)) return -1;
    } else {
        size_t off = sc->scratch_len;
        if (!put(sc, o->rep, o->replen) || !replace_field(sc, f, off)) return -1;
    }
    count_outcome(sc, o);
    *changed += o->changed;
    return 1;
}

/* The attribute through the Python message path (kv_outcome, memoised by its bytes). */
static int generic_kv(Scanner *sc, const wire_field *f, long *changed) {
    const outcome *o;
    outcome tmp = {0};
    int rc = memo_outcome(sc, &sc->kvs, sc->kv_outcome, parse_kv_outcome, f->data, f->len, &o, &tmp);
    if (rc > 0) rc = apply_outcome(sc, f, o, changed);
    outcome_free(&tmp);
    return rc;
}

/* 1 when an int64 (a varint's two's complement) or double could hold a card number: at least 13 digits
 * (redactor.py: BIG_NUMBER), so the Python path scans its decimal form. */
static int big_number(const any_parts *av) {
    if (av->kind == V_INT) {
        int64_t s = (int64_t)av->value;
        return s >= 1000000000000LL || s <= -1000000000000LL;
    }
    if (av->kind == V_DOUBLE) {
        double d;
        memcpy(&d, &av->value, 8);
        return d >= 1e12 || d <= -1e12;
    }
    return 0;
}

static int value_clean(Scanner *sc, const uint8_t *p, size_t n, int depth);

/* 1 when nothing in a kvlist/array payload needs work (every nested key and value checked), 0 when Python must
 * look, -1 on error. */
static int nested_clean(Scanner *sc, const any_parts *av, int depth) {
    if (depth >= NEST_MAX) return 0;
    wire_cur c = wire_span(av->data, av->len);
    wire_field f;
    int r;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != 1 || f.wtype != 2) return 0;
        if (av->kind == V_ARRAY) {
            int v = value_clean(sc, f.data, f.len, depth + 1);
            if (v != 1) return v;
            continue;
        }
        kv_parts kp;
        if (!split_kv(f.data, f.len, &kp)) return 0;
        key_rule kr;
        if (key_action(sc, kp.key, kp.keylen, &kr) < 0) return -1;
        if (kr.code == A_CLEAN) continue;
        if (kr.code != A_SCAN) return 0;
        int v = value_clean(sc, kp.val, kp.vallen, depth + 1);
        if (v != 1) return v;
    }
    return r == 0 ? 1 : 0;
}

static int value_clean(Scanner *sc, const uint8_t *p, size_t n, int depth) {
    any_parts av;
    if (!split_any(p, n, &av)) return 0;
    switch (av.kind) {
    case V_STRING: {
        int kinds = possible(av.data, av.len);
        return kinds >= 0 && !(kinds & sc->kinds_mask);
    }
    case V_BYTES: {
        int kinds = possible(av.data, av.len);
        return kinds < 0 || !(kinds & sc->kinds_mask); /* not UTF-8: the detectors skip it */
    }
    case V_ARRAY:
    case V_KVLIST:
        return nested_clean(sc, &av, depth);
    case V_INT:
    case V_DOUBLE:
        return !big_number(&av);
    default:
        return 1;
    }
}

/* The decimal text of a V_INT (as Python's str(int) writes it) into out; its length. */
static size_t int_text(const any_parts *av, char out[24]) {
    return (size_t)snprintf(out, 24, "%lld", (long long)(int64_t)av->value);
}

/* How common a byte is in serialized spans (framing bytes, lowercase letters and separators most): the
 * identity search anchors on the needle's rarest byte, so memchr skips most of the span. */
static int byte_commonness(uint8_t b) {
    if (b < 0x20) return 4; /* tags and lengths */
    if (b >= 'a' && b <= 'z') return strchr("etaoinsr", b) ? 4 : 3;
    if (b == '.' || b == '_' || b == '-' || b == '/' || b == ' ') return 3;
    if ((b >= '0' && b <= '9') || (b >= 'A' && b <= 'Z') || b >= 0x80) return 2;
    return 1;
}

/* 1 when v[:n] occurs in ctx[:ctx_len] at a place other than v itself. */
static int occurs_elsewhere(const uint8_t *ctx, size_t ctx_len, const uint8_t *v, size_t n) {
    if (ctx_len < n) return 0;
    size_t k = 0;
    int best = 5;
    for (size_t j = 0; j < n && best > 1; j++) {
        int w = byte_commonness(v[j]);
        if (w < best) {
            best = w;
            k = j;
        }
    }
    const uint8_t *at = ctx + k, *last = ctx + (ctx_len - n) + k; /* anchor positions of every full match */
    while (at <= last) {
        const uint8_t *hit = memchr(at, v[k], (size_t)(last - at) + 1);
        if (!hit) return 0;
        const uint8_t *start = hit - k;
        if (start != v && memcmp(start, v, n) == 0) return 1;
        at = hit + 1;
    }
    return 0;
}

/* 1 when the raw value of an attribute a rule drops, masks or pseudonymises recurs elsewhere in its span, the
 * span's resource or scope (or, for resource and scope attributes, its resource spans): the Python path then
 * scrubs it there (redactor.py: identity scrubbing), so give up. Values shorter than 3 bytes are not scrubbed. */
static int identity_recurs(Scanner *sc, const any_parts *av) {
    char num[24];
    const uint8_t *v;
    size_t n;
    if (av->kind == V_STRING) {
        v = av->data;
        n = av->len;
    } else if (av->kind == V_INT) {
        n = int_text(av, num);
        v = (const uint8_t *)num;
    } else {
        return 0;
    }
    if (n < 3 || !sc->ctx) return 0;
    if (occurs_elsewhere(sc->ctx, sc->ctx_len, v, n)) return 1;
    return sc->in_span && ((sc->res && occurs_elsewhere(sc->res, sc->res_len, v, n)) ||
                           (sc->scope && occurs_elsewhere(sc->scope, sc->scope_len, v, n)));
}

/* IPv4 a.b.c.d (ASCII digits, 1-3 each, <= 255, nothing around it) -> "a.b.c.0/24" as actions.py writes it;
 * 0 when the text is anything else (then the Python function decides). */
static size_t ipv4_net(const uint8_t *p, size_t n, char out[24]) {
    unsigned parts[4];
    size_t i = 0;
    for (int k = 0; k < 4; k++) {
        size_t digits = 0;
        unsigned v = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9' && digits < 4) {
            v = v * 10 + (unsigned)(p[i] - '0');
            i++;
            digits++;
        }
        if (digits == 0 || digits > 3 || v > 255) return 0;
        parts[k] = v;
        if (k < 3) {
            if (i >= n || p[i] != '.') return 0;
            i++;
        }
    }
    if (i != n) return 0;
    size_t w = 0;
    for (int k = 0; k < 3; k++) {
        unsigned v = parts[k];
        if (v >= 100) out[w++] = (char)('0' + v / 100);
        if (v >= 10) out[w++] = (char)('0' + v / 10 % 10);
        out[w++] = (char)('0' + v % 10);
        out[w++] = '.';
    }
    memcpy(out + w, "0/24", 4);
    return w + 4;
}

/* One attribute field (KeyValue). 1 ok, 0 give up, -1 error. */
static int do_kv(Scanner *sc, const wire_field *f, long *changed) {
    kv_parts kp;
    if (!split_kv(f->data, f->len, &kp)) return generic_kv(sc, f, changed);
    key_rule kr;
    if (key_action(sc, kp.key, kp.keylen, &kr) < 0) return -1;
    int code = kr.code;
    if (code == A_CLEAN) return 1;
    any_parts av;
    if (!split_any(kp.val, kp.vallen, &av)) return generic_kv(sc, f, changed);
    if (code == A_SCAN) {
        if (av.kind == V_STRING) {
            size_t bucket;
            if (known_clean(sc, av.data, av.len, &bucket)) return 1;
            int kinds = possible(av.data, av.len);
            if (kinds < 0) return 0;
            if (!(kinds & sc->kinds_mask)) {
                remember_clean(sc, av.data, av.len, bucket);
                return 1;
            }
            const outcome *o;
            outcome tmp = {0};
            int rc = memo_outcome(sc, &sc->texts, sc->text_outcome, parse_text_outcome, av.data, av.len, &o, &tmp);
            if (rc > 0 && o->kind == O_REPLACE) {
                size_t off = sc->scratch_len;
                if (!put_kv_string(sc, kp.key, kp.keylen, o->rep, o->replen, NULL, 0) || !replace_field(sc, f, off))
                    rc = -1;
                else {
                    count_outcome(sc, o);
                    *changed += 1;
                }
            }
            outcome_free(&tmp);
            return rc;
        }
        if (big_number(&av)) return generic_kv(sc, f, changed);
        int v = value_clean(sc, kp.val, kp.vallen, 0);
        if (v < 0) return -1;
        return v ? 1 : generic_kv(sc, f, changed);
    }
    if ((code == A_DROP || code == A_MASK || code == A_PSEUDO) && identity_recurs(sc, &av)) return 0;
    if (code == A_DROP) {
        if (!delete_field(sc, f)) return -1;
        sc->rule_hits[kr.rule]++;
        *changed += 1;
        return 1;
    }
    char net[24];
    if (code == A_MASK) {
        size_t off = sc->scratch_len;
        if (!put_kv_string(sc, kp.key, kp.keylen, kr.text, kr.textlen, NULL, 0) || !replace_field(sc, f, off))
            return -1;
    } else if (code == A_PSEUDO && sc->pseudonym &&
               (av.kind == V_STRING || av.kind == V_BYTES || av.kind == V_EMPTY)) {
        if (av.kind == V_STRING && possible(av.data, av.len) < 0) return 0;
        char digest[64];
        size_t dlen;
        if (pseudonym_digest(sc, av.data, av.len, digest, &dlen) < 0) return -1;
        size_t off = sc->scratch_len;
        if (!put_kv_string(sc, kp.key, kp.keylen, kr.text, kr.textlen, (const uint8_t *)digest, dlen) ||
            !replace_field(sc, f, off))
            return -1;
    } else if ((code == A_GEN || code == A_GEN_IP) && av.kind == V_STRING) {
        if (possible(av.data, av.len) < 0) return 0;
        size_t netlen = code == A_GEN_IP ? ipv4_net(av.data, av.len, net) : 0;
        size_t off = sc->scratch_len;
        if (netlen) {
            if (!put_kv_string(sc, kp.key, kp.keylen, (const uint8_t *)net, netlen, NULL, 0) ||
                !replace_field(sc, f, off))
                return -1;
        } else {
            /* anything but a plain IPv4: the rule's Python function, with the GIL */
            gil_take(sc);
            PyObject *text = PyUnicode_DecodeUTF8((const char *)av.data, (Py_ssize_t)av.len, "strict");
            if (!text) return -1;
            PyObject *owned = PyObject_CallOneArg(kr.fn, text);
            Py_DECREF(text);
            if (!owned) return -1;
            Py_ssize_t len;
            const char *u = PyUnicode_Check(owned) ? PyUnicode_AsUTF8AndSize(owned, &len) : NULL;
            if (!u) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a generalisation returns str");
                Py_DECREF(owned);
                return -1;
            }
            int ok = put_kv_string(sc, kp.key, kp.keylen, (const uint8_t *)u, (size_t)len, NULL, 0) &&
                     replace_field(sc, f, off);
            Py_DECREF(owned);
            if (!ok) return -1;
            gil_drop(sc);
        }
    } else {
        return generic_kv(sc, f, changed);
    }
    sc->rule_hits[kr.rule]++;
    *changed += 1;
    return 1;
}

/* ------------------------------------------------------------------ the message walk */

typedef int (*walker)(Scanner *, const uint8_t *, size_t, long *);

/* Walk a length-delimited field's payload; fix its length prefix when the payload's size changed. */
static int container(Scanner *sc, const wire_field *f, walker w, long *changed) {
    Py_ssize_t before = sc->delta;
    size_t first = sc->n_edits;
    int r = w(sc, f->data, f->len, changed);
    if (r <= 0) return r;
    Py_ssize_t inner = sc->delta - before;
    if (inner == 0) return 1;
    size_t off = sc->scratch_len;
    if (!put_varint(sc, (uint64_t)((Py_ssize_t)f->len + inner))) return -1;
    if (!add_edit(sc, after_tag(f), f->data, off)) return -1;
    /* keep the edits in input order (the length prefix comes before the payload's edits) */
    edit fix = sc->edits[sc->n_edits - 1];
    memmove(&sc->edits[first + 1], &sc->edits[first], (sc->n_edits - 1 - first) * sizeof(edit));
    sc->edits[first] = fix;
    return 1;
}

static int walk_attrs_only(Scanner *sc, const uint8_t *p, size_t n, long *changed, uint32_t number) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != number) continue;
        if (f.wtype != 2) return 0;
        int k = do_kv(sc, &f, changed);
        if (k <= 0) return k;
    }
    return r == 0 ? 1 : 0;
}

static int walk_resource(Scanner *sc, const uint8_t *p, size_t n, long *changed) {
    return walk_attrs_only(sc, p, n, changed, 1);
}

/* InstrumentationScope: name (1) and version (2) through the detectors, attributes (3). */
static int walk_scope(Scanner *sc, const uint8_t *p, size_t n, long *changed) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r, names = 0, versions = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        int k = 1;
        if (f.number == 1 || f.number == 2) {
            if (f.wtype != 2 || (f.number == 1 ? names++ : versions++)) return 0;
            if (f.len) k = do_text(sc, &f, changed);
        } else if (f.number == 3) {
            if (f.wtype != 2) return 0;
            k = do_kv(sc, &f, changed);
        }
        if (k <= 0) return k;
    }
    return r == 0 ? 1 : 0;
}

/* Link: trace_state (3) through the detectors, attributes (4). */
static int walk_link(Scanner *sc, const uint8_t *p, size_t n, long *changed) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r, states = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        int k = 1;
        if (f.number == 3) {
            if (f.wtype != 2 || states++) return 0;
            if (f.len) k = do_text(sc, &f, changed);
        } else if (f.number == 4) {
            if (f.wtype != 2) return 0;
            k = do_kv(sc, &f, changed);
        }
        if (k <= 0) return k;
    }
    return r == 0 ? 1 : 0;
}

static int walk_event(Scanner *sc, const uint8_t *p, size_t n, long *changed) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r, names = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        int k = 1;
        if (f.number == 2) {
            if (f.wtype != 2 || names++) return 0;
            k = do_text(sc, &f, changed);
        } else if (f.number == 3) {
            if (f.wtype != 2) return 0;
            k = do_kv(sc, &f, changed);
        }
        if (k <= 0) return k;
    }
    return r == 0 ? 1 : 0;
}

static int walk_status(Scanner *sc, const uint8_t *p, size_t n, long *changed) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r, messages = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != 2) continue;
        if (f.wtype != 2 || messages++) return 0;
        if (f.len) {
            int k = do_text(sc, &f, changed);
            if (k <= 0) return k;
        }
    }
    return r == 0 ? 1 : 0;
}

static int walk_span(Scanner *sc, const uint8_t *p, size_t n, long *unused) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r, names = 0, statuses = 0, states = 0;
    long changed = 0;
    const uint8_t *outer = sc->ctx;
    size_t outer_len = sc->ctx_len;
    sc->ctx = p;
    sc->ctx_len = n;
    sc->in_span = 1;
    while ((r = wire_next(&c, &f)) == 1) {
        int k = 1;
        switch (f.number) {
        case 3: /* trace_state */
            if (f.wtype != 2 || states++) return 0;
            if (f.len) k = do_text(sc, &f, &changed);
            break;
        case 5:
            if (f.wtype != 2 || names++) return 0;
            k = do_text(sc, &f, &changed);
            break;
        case 9:
            if (f.wtype != 2) return 0;
            k = do_kv(sc, &f, &changed);
            break;
        case 11:
            if (f.wtype != 2) return 0;
            k = container(sc, &f, walk_event, &changed);
            break;
        case 13:
            if (f.wtype != 2) return 0;
            k = container(sc, &f, walk_link, &changed);
            break;
        case 15:
            if (f.wtype != 2 || statuses++) return 0;
            k = container(sc, &f, walk_status, &changed);
            break;
        default:
            break;
        }
        if (k <= 0) return k;
    }
    sc->ctx = outer;
    sc->ctx_len = outer_len;
    sc->in_span = 0;
    if (r < 0) return 0;
    if (changed) {
        sc->spans_touched++;
        if (sc->summary) {
            /* attributes += {key: "redaction.redacted.count", value: {int_value: changed}}, after the rest */
            static const char key[] = "redaction.redacted.count";
            size_t keylen = sizeof key - 1;
            size_t anylen = 1 + wire_varint_size((uint64_t)(int64_t)changed);
            size_t kvlen = 1 + wire_varint_size(keylen) + keylen + 1 + wire_varint_size(anylen) + anylen;
            size_t off = sc->scratch_len;
            uint8_t t = 0x4A;
            if (!put(sc, &t, 1) || !put_varint(sc, kvlen)) return -1;
            t = 0x0A;
            if (!put(sc, &t, 1) || !put_varint(sc, keylen) || !put(sc, key, keylen)) return -1;
            t = 0x12;
            if (!put(sc, &t, 1) || !put_varint(sc, anylen)) return -1;
            t = 0x18;
            if (!put(sc, &t, 1) || !put_varint(sc, (uint64_t)(int64_t)changed)) return -1;
            if (!add_edit(sc, p + n, p + n, off)) return -1;
        }
    }
    return 1;
}

/* ScopeSpans and ResourceSpans have the same shape: field 1 (scope / resource) and repeated field 2 (spans /
 * scope spans), each walked by its own walker. */
static int walk_pair(Scanner *sc, const uint8_t *p, size_t n, walker first, walker second) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r;
    long unused = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        int k = 1;
        if (f.number == 1 || f.number == 2) {
            if (f.wtype != 2) return 0;
            k = container(sc, &f, f.number == 1 ? first : second, &unused);
        }
        if (k <= 0) return k;
    }
    return r == 0 ? 1 : 0;
}

/* The payload of field 1 (the resource / scope) of a ResourceSpans / ScopeSpans, wherever it stands (before the
 * spans are walked: a span's own identities are looked for in it). 1 (*out NULL when absent), or 0 when the
 * field occurs more than once (merged by protobuf) or the message is malformed: the Python path decides. */
static int first_field(const uint8_t *p, size_t n, const uint8_t **out, size_t *out_len) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r;
    *out = NULL;
    *out_len = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != 1) continue;
        if (f.wtype != 2 || *out) return 0;
        *out = f.data;
        *out_len = f.len;
    }
    return r == 0;
}

static int walk_scope_spans(Scanner *sc, const uint8_t *p, size_t n, long *changed) {
    if (!first_field(p, n, &sc->scope, &sc->scope_len)) return 0;
    int r = walk_pair(sc, p, n, walk_scope, walk_span);
    sc->scope = NULL;
    return r;
}

static int walk_resource_spans(Scanner *sc, const uint8_t *p, size_t n, long *changed) {
    sc->ctx = p; /* resource and scope attributes: their raw values may recur anywhere in the resource spans */
    sc->ctx_len = n;
    sc->in_span = 0;
    sc->scope = NULL;
    if (!first_field(p, n, &sc->res, &sc->res_len)) return 0;
    int r = walk_pair(sc, p, n, walk_resource, walk_scope_spans);
    sc->res = NULL;
    return r;
}

static int walk_request(Scanner *sc, const uint8_t *p, size_t n) {
    wire_cur c = wire_span(p, n);
    wire_field f;
    int r;
    long unused = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != 1) continue;
        if (f.wtype != 2) return 0;
        int k = container(sc, &f, walk_resource_spans, &unused);
        if (k <= 0) return k;
    }
    return r == 0 ? 1 : 0;
}

static PyObject *counts_tuple(const Py_ssize_t *counts, Py_ssize_t n) {
    int any = 0;
    for (Py_ssize_t i = 0; i < n; i++) any |= counts[i] != 0;
    if (!any) Py_RETURN_NONE;
    PyObject *t = PyTuple_New(n);
    if (!t) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromSsize_t(counts[i]);
        if (!v) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

/* The scanner redact() is walking on this thread (a callback calling redact() again would wait on itself). */
static _Thread_local const Scanner *walking;

/* Puts input buf[:n] with the walk's edits applied into w (n + delta bytes). 0 when the edits are not in input
 * order (never expected). */
static int apply_edits(const Scanner *sc, const uint8_t *buf, size_t n, uint8_t *w) {
    size_t at = 0;
    for (size_t i = 0; i < sc->n_edits; i++) {
        const edit *e = &sc->edits[i];
        if (e->start < at || e->end < e->start) return 0; /* edits are in input order and never overlap */
        memcpy(w, buf + at, e->start - at);
        w += e->start - at;
        memcpy(w, sc->scratch + e->off, e->len);
        w += e->len;
        at = e->end;
    }
    memcpy(w, buf + at, n - at);
    return 1;
}

static PyObject *Scanner_redact(Scanner *sc, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "redact() takes bytes");
        return NULL;
    }
    if (walking == sc) {
        PyErr_SetString(PyExc_RuntimeError, "redact() is not reentrant");
        return NULL;
    }
    if (!sc->key_action || !sc->rule_hits || !sc->walk_lock) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner.__init__ was not called");
        return NULL;
    }
    Py_ssize_t n_rules = sc->n_rules;
    Py_ssize_t *rule_hits = PyMem_Calloc((size_t)n_rules, sizeof(Py_ssize_t));
    if (!rule_hits) return PyErr_NoMemory();
    Py_ssize_t detector_hits[N_KINDS], spans_touched = 0;
    size_t n = (size_t)PyBytes_GET_SIZE(arg);
    const uint8_t *buf = (const uint8_t *)PyBytes_AS_STRING(arg);
    uint8_t *built = NULL; /* the output when it outgrew `room` (PyMem_Raw): copied into bytes with the GIL */
    Py_ssize_t total = (Py_ssize_t)n;
    /* The output's bytes object, made before the walk with room to grow: the edits are applied into it without
     * the GIL, and the GIL's part is a resize, not a copy of the whole request (plus its page faults). */
    PyObject *room = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n + n / 4 + 4096));
    if (!room) {
        PyMem_Free(rule_hits);
        return NULL;
    }
    int unordered = 0, edited = 0;
    PyObject *result = NULL, *out = NULL, *rules = NULL, *dets = NULL;
    Py_INCREF(arg); /* the buffer must outlive the callbacks */
    sc->busy++;
    walking = sc;
    /* The walk runs without the GIL and outside any Python lock. The scanner's own lock, taken without the GIL
     * (so a thread waiting for it holds nothing another thread needs), keeps one walk at a time on the memo
     * tables and the per-call state; a memo miss takes the GIL while holding it, which is safe because no thread
     * waits for this lock while holding the GIL. The GIL is taken back after the lock is released, so the next
     * walk starts while this thread waits for the GIL. clear(), memo_sizes() and __init__ refuse while busy. */
    PyThreadState *ts = PyEval_SaveThread();
    PyThread_acquire_lock(sc->walk_lock, WAIT_LOCK);
    sc->released = ts;
    sc->buf = buf;
    sc->ctx = NULL;
    sc->ctx_len = 0;
    sc->n_edits = 0;
    sc->scratch_len = 0;
    sc->delta = 0;
    sc->spans_touched = 0;
    memset(sc->recent_keys, 0, sizeof sc->recent_keys);
    memset(sc->clean_texts, 0, sizeof sc->clean_texts);
    memset(sc->rule_hits, 0, (size_t)n_rules * sizeof(Py_ssize_t));
    memset(sc->detector_hits, 0, sizeof sc->detector_hits);
    int r = walk_request(sc, buf, n);
    if (r > 0) {
        memcpy(rule_hits, sc->rule_hits, (size_t)n_rules * sizeof(Py_ssize_t));
        memcpy(detector_hits, sc->detector_hits, sizeof detector_hits);
        spans_touched = sc->spans_touched;
        if (sc->n_edits) {
            edited = 1;
            total = (Py_ssize_t)n + sc->delta;
            uint8_t *into = total <= PyBytes_GET_SIZE(room) ? (uint8_t *)PyBytes_AS_STRING(room)
                                                             : (built = PyMem_RawMalloc(total ? (size_t)total : 1));
            if (!into)
                r = no_memory(sc);
            else if (!apply_edits(sc, buf, n, into))
                unordered = 1;
        }
    }
    if (sc->scratch_cap > (1u << 22)) { /* don't keep a huge buffer after an outsized request */
        PyMem_RawFree(sc->scratch);
        sc->scratch = NULL;
        sc->scratch_cap = 0;
    }
    sc->buf = NULL;
    ts = sc->released; /* NULL when the walk ended with the GIL taken (an error) */
    sc->released = NULL;
    PyThread_release_lock(sc->walk_lock);
    if (ts) PyEval_RestoreThread(ts);
    walking = NULL;
    sc->busy--;
    if (r < 0) goto done;
    if (r == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (unordered) {
        PyErr_SetString(PyExc_RuntimeError, "redaction edits overlap");
        goto done;
    }
    if (built) {
        out = PyBytes_FromStringAndSize((const char *)built, total);
    } else if (edited) {
        if (_PyBytes_Resize(&room, total) < 0) goto done; /* room is NULL now */
        out = Py_NewRef(room);
    } else {
        out = Py_NewRef(arg);
    }
    if (!out) goto done;
    rules = counts_tuple(rule_hits, n_rules);
    if (!rules) goto done;
    dets = counts_tuple(detector_hits, N_KINDS);
    if (!dets) goto done;
    result = Py_BuildValue("(OnOO)", out, spans_touched, rules, dets);
done:
    PyMem_RawFree(built);
    Py_XDECREF(room);
    PyMem_Free(rule_hits);
    Py_XDECREF(out);
    Py_XDECREF(rules);
    Py_XDECREF(dets);
    Py_DECREF(arg);
    return result;
}

static PyObject *Scanner_clear(Scanner *sc, PyObject *unused) {
    if (sc->busy) {
        PyErr_SetString(PyExc_RuntimeError, "clear() during redact()");
        return NULL;
    }
    tab_clear(&sc->keys);
    tab_clear(&sc->kvs);
    tab_clear(&sc->texts);
    tab_clear(&sc->pseudos);
    Py_RETURN_NONE;
}

static PyObject *Scanner_memo_sizes(Scanner *sc, PyObject *unused) {
    if (sc->busy) {
        PyErr_SetString(PyExc_RuntimeError, "memo_sizes() during redact()");
        return NULL;
    }
    return Py_BuildValue("(nnnn)", (Py_ssize_t)sc->keys.count, (Py_ssize_t)sc->kvs.count,
                         (Py_ssize_t)sc->texts.count, (Py_ssize_t)sc->pseudos.count);
}

static int Scanner_init(Scanner *sc, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key_action", "kv_outcome", "text_outcome", "kinds_mask", "summary", "pseudonym",
                             "hmac_key", "pseudonym_length", "n_rules", "memo_max", NULL};
    PyObject *ka, *ko, *to, *pseudonym, *key;
    int mask, summary;
    Py_ssize_t length, n_rules, memo_max;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOipOOnnn", kwlist, &ka, &ko, &to, &mask, &summary, &pseudonym,
                                     &key, &length, &n_rules, &memo_max))
        return -1;
    if (key != Py_None && !PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "hmac_key must be bytes or None");
        return -1;
    }
    if (length < 0 || length > 64) {
        PyErr_SetString(PyExc_ValueError, "pseudonym_length 0..64");
        return -1;
    }
    if (!PyCallable_Check(ka) || !PyCallable_Check(ko) || !PyCallable_Check(to) ||
        (pseudonym != Py_None && !PyCallable_Check(pseudonym))) {
        PyErr_SetString(PyExc_TypeError, "callbacks must be callable (pseudonym: or None)");
        return -1;
    }
    if (n_rules < 1 || memo_max < 1 || sc->busy) {
        PyErr_SetString(PyExc_ValueError, "n_rules >= 1, memo_max >= 1");
        return -1;
    }
    if (!sc->walk_lock && !(sc->walk_lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t *hits = PyMem_Calloc((size_t)n_rules, sizeof(Py_ssize_t));
    if (!hits) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(sc->rule_hits);
    sc->rule_hits = hits;
    Py_XSETREF(sc->key_action, Py_NewRef(ka));
    Py_XSETREF(sc->kv_outcome, Py_NewRef(ko));
    Py_XSETREF(sc->text_outcome, Py_NewRef(to));
    Py_XSETREF(sc->pseudonym, pseudonym == Py_None ? NULL : Py_NewRef(pseudonym));
    if (sc->hmac_template) ssl.ctx_free(sc->hmac_template);
    if (sc->hmac_work) ssl.ctx_free(sc->hmac_work);
    sc->hmac_template = sc->hmac_work = NULL;
    if (key != Py_None && pseudonym != Py_None) {
        sc->hmac_template = hmac_keyed((const uint8_t *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key));
        sc->hmac_work = sc->hmac_template ? ssl.ctx_new() : NULL;
        if (!sc->hmac_work && sc->hmac_template) {
            ssl.ctx_free(sc->hmac_template);
            sc->hmac_template = NULL;
        }
    }
    sc->pseudonym_length = length;
    sc->kinds_mask = mask & ((1 << (N_KINDS + 1)) - 1);
    sc->summary = summary;
    sc->n_rules = n_rules;
    tab_clear(&sc->keys);
    tab_clear(&sc->kvs);
    tab_clear(&sc->texts);
    tab_clear(&sc->pseudos);
    sc->keys.max = memo_max < KEYS_MAX ? (size_t)memo_max : KEYS_MAX;
    sc->kvs.max = (size_t)memo_max;
    sc->texts.max = (size_t)memo_max;
    sc->pseudos.max = (size_t)memo_max;
    return 0;
}

static int tab_traverse(const table *t, visitproc visit, void *arg) {
    if (!t->slots) return 0;
    for (size_t i = 0; i <= t->mask; i++) Py_VISIT(t->slots[i].value);
    return 0;
}

/* The scanner holds Python callables (closures over the stage's objects, which hold the scanner) and memoised
 * answers, so it takes part in garbage collection. */
static int Scanner_traverse(Scanner *sc, visitproc visit, void *arg) {
    Py_VISIT(sc->key_action);
    Py_VISIT(sc->kv_outcome);
    Py_VISIT(sc->text_outcome);
    Py_VISIT(sc->pseudonym);
    /* only the key table holds objects (and it is written with the GIL held); the others are C data, which a
     * walk without the GIL may be writing */
    return tab_traverse(&sc->keys, visit, arg);
}

static int Scanner_tp_clear(Scanner *sc) {
    if (sc->busy) return 0; /* unreachable while redact() runs (its caller holds it); never free under it */
    Py_CLEAR(sc->key_action);
    Py_CLEAR(sc->kv_outcome);
    Py_CLEAR(sc->text_outcome);
    Py_CLEAR(sc->pseudonym);
    tab_clear(&sc->keys);
    tab_clear(&sc->kvs);
    tab_clear(&sc->texts);
    tab_clear(&sc->pseudos);
    return 0;
}

static void Scanner_dealloc(Scanner *sc) {
    PyObject_GC_UnTrack(sc);
    Py_XDECREF(sc->key_action);
    Py_XDECREF(sc->kv_outcome);
    Py_XDECREF(sc->text_outcome);
    Py_XDECREF(sc->pseudonym);
    tab_free(&sc->keys);
    tab_free(&sc->kvs);
    tab_free(&sc->texts);
    tab_free(&sc->pseudos);
    PyMem_RawFree(sc->edits);
    PyMem_RawFree(sc->scratch);
    PyMem_Free(sc->rule_hits);
    if (sc->hmac_template) ssl.ctx_free(sc->hmac_template); /* frees its copy of the key's pads */
    if (sc->hmac_work) ssl.ctx_free(sc->hmac_work);
    if (sc->walk_lock) PyThread_free_lock(sc->walk_lock);
    Py_TYPE(sc)->tp_free((PyObject *)sc);
}

static PyMethodDef Scanner_methods[] = {
    {"redact", (PyCFunction)Scanner_redact, METH_O,
     "Redact a serialized ExportTraceServiceRequest: (out, spans_touched, rule_hits, detector_hits) or None."},
    {"clear", (PyCFunction)Scanner_clear, METH_NOARGS, "Forget every memoised key, attribute and text."},
    {"memo_sizes", (PyCFunction)Scanner_memo_sizes, METH_NOARGS,
     "(keys, attributes, texts, pseudonyms) memoised now."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "processor.native._redact.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The redaction stage's traces pass (see the module docstring).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_traverse = (traverseproc)Scanner_traverse,
    .tp_clear = (inquiry)Scanner_tp_clear,
    .tp_free = PyObject_GC_Del,
    .tp_methods = Scanner_methods,
};

/* ------------------------------------------------------------------ module functions (for tests) */

static PyObject *py_possible_kinds(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "possible_kinds() takes bytes");
        return NULL;
    }
    int kinds = possible((const uint8_t *)PyBytes_AS_STRING(arg), (size_t)PyBytes_GET_SIZE(arg));
    if (kinds < 0) Py_RETURN_NONE;
    return PyLong_FromLong(kinds);
}

static PyMethodDef methods[] = {
    {"possible_kinds", py_possible_kinds, METH_O,
     "Bitmask of the detector kinds that could match a UTF-8 text (None: not UTF-8)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_redact", NULL, -1, methods};

PyMODINIT_FUNC PyInit__redact(void) {
    init_byte_class();
    if (!hash_key_random(&memo_key)) return NULL;
    libcrypto_load();
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "libcrypto", ssl.loaded ? Py_True : Py_False) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
