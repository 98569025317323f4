/* The tail-sampling trace store: buffered traces live in C, Python acts once per batch of decisions.
 *
 * Why: with the intake already native, what the sampler still paid was Python work per trace (an entry object,
 * dict inserts, fact merging, one decide call, cache and metrics updates): ~5 us per ~10-span trace. Here a
 * request is taken in one call (spans appended to their trace's framed chunk per (resource, scope) group, the
 * facts policies read merged per trace), readiness (root_grace / decision_wait / budgets) is tracked in C,
 * and a batch of due traces is handed to Python as packed records (numpy views them) so policies evaluate as
 * array operations. The kept traces are serialized here per group (`emit_kept`; Python reads the chunks of
 * the few it rewrites itself) and Python `finish`es the batch: decisions go into a bounded two-generation
 * cache (late spans follow it here) and the entries are freed.
 *
 * Store(names, keys, max_spans, cache_size)
 *   names: tuple of bytes (span names whose max duration is tracked, one int64 column each, -1 = none seen)
 *   keys:  tuple of (bytes key, gates | None): a gated key sets one "hit" bit per gate (a serialized KeyValue)
 *          matched exactly by a span attribute; an ungated key sets one "present" bit when any span has it.
 *          Bits are numbered in key order then gate order (at most 64 of each).
 * Decision codes are Python ints >= 0 whose low bit means "kept" (late spans of kept traces are returned).
 * All reads of request bytes are bounds-checked (wire.h); a request this code does not understand is
 * refused whole (intake returns None before touching any state) and the Python buffer path takes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>

#include "nogil_job.h"
#include "otlp.h"

typedef struct chunk {
    struct chunk *next;
    int32_t gid;
    uint32_t len, cap;
    uint32_t reserve;             /* intake scratch: bytes this request will append (0 outside intake) */
    uint8_t *data;
} chunk_t;

typedef struct entry {
    uint8_t tid[16];
    struct entry *hnext;          /* hash chain */
    struct entry *prev, *next;    /* all entries, first-seen order */
    struct entry *rprev, *rnext;  /* entries with a root, first-root order */
    chunk_t *chunks, *logs;
    chunk_t *pending;             /* intake scratch: new chunks, linked at commit (NULL outside intake) */
    double first, root_seen;      /* root_seen < 0: no root yet */
    int64_t nbytes;
    uint64_t start, end, hits, present, classes;
    int32_t nspans, nlogs, max_severity;
    int32_t adding;               /* intake scratch: spans this request adds (0 outside intake) */
    int32_t root_gid;
    uint32_t root_at, root_len;
    uint8_t error, exception, has_res, selected, in_roots, root_pending, full_pending;
    uint32_t mark;                /* the scope pass that last listed this entry (see end_scope_pass) */
    int64_t durs[];
} entry_t;

/* One ScopeSpans of a request: its ResourceSpans and ScopeSpans messages. */
typedef struct {
    const uint8_t *res, *scope;
    size_t res_len, scope_len;
} scope_ref;

/* The packed record handed to numpy (natural alignment; see processor/sampling/native_store.py RECORD). */
typedef struct {
    uint8_t tid[16];
    double first;
    int64_t nbytes;
    uint64_t start, end, hits, present, classes;
    int32_t nspans, nlogs, max_severity;
    uint8_t error, exception, has_res, pad;
} record_t;

typedef struct {
    uint8_t tid[16];
    int32_t code; /* -1: empty slot */
} cache_slot;

typedef struct {
    cache_slot *slots;
    size_t cap, count;
} cache_gen;

typedef struct {
    const uint8_t *pattern;
    Py_ssize_t len;
    int gated;                /* exact-value gates (hit bits) rather than one present bit */
    size_t ngates;
    const uint8_t **gate_data; /* the gates' bytes (owned by keys_obj), read without the GIL */
    size_t *gate_lens;
    int bit;                  /* first hit bit (gated) or the present bit (ungated) */
} key_t_;

/* One remembered classifier answer: values of read-all keys (routes, placements) repeat, so most attributes are
 * answered here without a Python call. Only short KeyValues are remembered, so the memo stays small. */
#define CLASS_MEMO 4096
#define CLASS_MEMO_MAX_LEN 256
struct class_slot {
    uint64_t hash, bits;
    Py_ssize_t key_index;
    uint32_t len;
    uint8_t used;
    uint8_t kv[CLASS_MEMO_MAX_LEN];
};

typedef struct {
    PyObject_HEAD
    PyObject *names_obj, *keys_obj;
    PyObject *classifier; /* NULL, or classify(key index, serialized KeyValue) -> class bits (see set_classifier) */
    struct class_slot *classes_memo; /* direct-mapped memo of classifier answers (CLASS_MEMO slots) */
    PyThread_type_lock memo_lock;    /* guards classes_memo: `parse` reads spans on several threads at once */
    hash_key memo_key;               /* the memo's hash key (never re-keyed: read without the stage's lock) */
    const uint8_t **names;
    Py_ssize_t *name_lens;
    Py_ssize_t nnames;
    key_t_ *keys;
    Py_ssize_t nkeys;
    entry_t **table;
    size_t tcap, count;
    entry_t *head, *tail, *rhead, *rtail;
    int64_t nbytes, nspans;
    int32_t max_spans;
    size_t half;
    cache_gen young, old;
    int32_t *refs;
    size_t nrefs;
    entry_t **batch;
    Py_ssize_t nbatch, batch_cap;
    uint32_t serial; /* one per scope pass of an intake */
    hash_key hkey;   /* the trace table's and the decision cache's key (hash.h), random per store */
    uint64_t rekeys; /* times a chain or probe grew past its bound and the tables were re-keyed */
    int parsing;             /* parses that may call the classifier (changed with the GIL held) */
    /* Every call that reads or changes the buffered traces holds `mu`: Python's calls (made under the stage's
     * lock) and the merges that parse jobs make without the GIL and without that lock (see merge_ahead). It is
     * never held while waiting for the GIL by a thread that has no Python work to finish under it. */
    pthread_mutex_t mu;
    pthread_t mu_owner;      /* the thread holding `mu` (0: none); read with __atomic, see store_lock */
    /* The groups a job may merge into without asking Python: framed (resource, scope) headers -> intern code,
     * for the groups that hold buffered chunks (refs > 0). An entry goes when its group's last chunk goes. */
    struct gkey **gmap;
    size_t gmap_cap, gmap_n;
    struct gkey **gkey_of;   /* per gid (nrefs long): its gmap entry or NULL */
} Store;

/* Bounds on the work one lookup may do: a hash chain of the trace table longer than CHAIN_MAX, or a decision-cache
 * probe longer than PROBE_MAX, re-keys both tables (O(n) once). Under a secret random key neither happens by
 * chance (the table's load is at most 1, the cache's 1/2); they bound the damage if the key were ever known. */
#define CHAIN_MAX 32
#define PROBE_MAX 64

static void rekey(Store *s);


/* -- decision cache ---------------------------------------------------------------------------------------- */

static int cache_alloc(cache_gen *g, size_t half) {
    size_t cap = 16;
    while (cap < half * 2) cap <<= 1;
    g->slots = PyMem_RawMalloc(cap * sizeof(cache_slot));
    if (!g->slots) return 0;
    g->cap = cap;
    g->count = 0;
    for (size_t i = 0; i < cap; i++) g->slots[i].code = -1;
    return 1;
}

/* The slot holding tid, or the empty slot where it would go; *probes counts the slots looked at. */
static cache_slot *cache_find(const hash_key *k, cache_gen *g, const uint8_t *tid, size_t *probes) {
    size_t mask = g->cap - 1, i = (size_t)tid_hash(k, tid) & mask;
    *probes = 1;
    while (g->slots[i].code >= 0) {
        if (memcmp(g->slots[i].tid, tid, 16) == 0) return &g->slots[i];
        i = (i + 1) & mask;
        ++*probes;
    }
    return &g->slots[i];
}

static int32_t cache_get(Store *s, const uint8_t *tid) {
    size_t probes;
    cache_slot *slot = cache_find(&s->hkey, &s->young, tid, &probes);
    if (slot->code >= 0) return slot->code;
    slot = cache_find(&s->hkey, &s->old, tid, &probes);
    return slot->code;
}

static void cache_put(Store *s, const uint8_t *tid, int32_t code) {
    if (s->young.count >= s->half) {
        cache_gen t = s->old;
        s->old = s->young;
        s->young = t;
        for (size_t i = 0; i < s->young.cap; i++) s->young.slots[i].code = -1;
        s->young.count = 0;
    }
    size_t probes;
    cache_slot *slot = cache_find(&s->hkey, &s->young, tid, &probes);
    if (probes > PROBE_MAX) {
        rekey(s);
        slot = cache_find(&s->hkey, &s->young, tid, &probes);
    }
    if (slot->code < 0) {
        memcpy(slot->tid, tid, 16);
        s->young.count++;
    }
    slot->code = code;
}

/* Re-inserts one cache generation's decisions under the current key (kept as they are when memory is short:
 * still correct, only slower). */
static void cache_rehash(Store *s, cache_gen *g) {
    cache_slot *old = g->slots, *fresh = PyMem_RawMalloc(g->cap * sizeof(cache_slot));
    if (!fresh) return;
    for (size_t i = 0; i < g->cap; i++) fresh[i].code = -1;
    g->slots = fresh;
    for (size_t i = 0; i < g->cap; i++) {
        if (old[i].code < 0) continue;
        size_t probes;
        cache_slot *slot = cache_find(&s->hkey, g, old[i].tid, &probes);
        *slot = old[i];
    }
    PyMem_RawFree(old);
}

/* A new key for both tables, and every entry and decision placed under it. */
static void rekey(Store *s) {
    s->hkey = hash_key_derive(&s->hkey, ++s->rekeys);
    memset(s->table, 0, s->tcap * sizeof(entry_t *));
    for (entry_t *e = s->head; e; e = e->next) {
        size_t b = tid_hash(&s->hkey, e->tid) & (s->tcap - 1);
        e->hnext = s->table[b];
        s->table[b] = e;
    }
    cache_rehash(s, &s->young);
    cache_rehash(s, &s->old);
}

/* -- entries ------------------------------------------------------------------------------------------------ */

static entry_t *find_entry(Store *s, const uint8_t *tid) {
    entry_t *e = s->table[tid_hash(&s->hkey, tid) & (s->tcap - 1)];
    while (e && memcmp(e->tid, tid, 16) != 0) e = e->hnext;
    return e;
}

static int grow_table(Store *s) {
    size_t cap = s->tcap * 2;
    entry_t **table = PyMem_RawCalloc(cap, sizeof(entry_t *));
    if (!table) return 0;
    for (size_t i = 0; i < s->tcap; i++) {
        entry_t *e = s->table[i];
        while (e) {
            entry_t *n = e->hnext;
            size_t b = tid_hash(&s->hkey, e->tid) & (cap - 1);
            e->hnext = table[b];
            table[b] = e;
            e = n;
        }
    }
    PyMem_RawFree(s->table);
    s->table = table;
    s->tcap = cap;
    return 1;
}

/* A new entry, not yet in the table: intake allocates every entry a request needs before it changes anything. */
static entry_t *alloc_entry(Store *s, const uint8_t *tid, double now) {
    entry_t *e = PyMem_RawCalloc(1, sizeof(entry_t) + sizeof(int64_t) * (size_t)s->nnames);
    if (!e) return NULL;
    memcpy(e->tid, tid, 16);
    e->first = now;
    e->root_seen = -1.0;
    e->root_gid = -1;
    e->start = UINT64_MAX;
    for (Py_ssize_t i = 0; i < s->nnames; i++) e->durs[i] = -1;
    return e;
}

/* Puts an allocated entry into the table and the first-seen list (the table must have room: cannot fail). */
static void link_entry(Store *s, entry_t *e) {
    size_t b = tid_hash(&s->hkey, e->tid) & (s->tcap - 1), chain = 0;
    e->hnext = s->table[b];
    s->table[b] = e;
    for (entry_t *o = e->hnext; o && chain <= CHAIN_MAX; o = o->hnext) chain++;
    e->prev = s->tail;
    e->next = NULL;
    if (s->tail) s->tail->next = e; else s->head = e;
    s->tail = e;
    s->count++;
    if (chain > CHAIN_MAX) rekey(s);
}

/* Roots that arrived in one scope pass join the first-root list in the order their traces first appear in that
 * scope (what the Python buffer does, which takes a scope's spans trace by trace), so both decide traces that
 * came in the same request in the same order. (Traces that reached max_spans_per_trace are listed the same way
 * by intake's reserve pass.) */
static void end_scope_pass(Store *s, entry_t **order, size_t *norder, double now) {
    for (size_t k = 0; k < *norder; k++) {
        entry_t *e = order[k];
        if (!e->root_pending) continue;
        e->root_pending = 0;
        if (e->in_roots) continue;
        e->in_roots = 1;
        e->root_seen = now;
        e->rprev = s->rtail;
        e->rnext = NULL;
        if (s->rtail) s->rtail->rnext = e; else s->rhead = e;
        s->rtail = e;
    }
    *norder = 0;
}

/* The largest `intern` answer (gid * 2 + flag) taken: gids index an int32 refs array. */
#define MAX_GID_CODE 0x7FFFFFFFLL

/* Adds delta to a group's chunk count, growing the table on demand; -1 with a Python error when gid is out of
 * range (a negative gid would never end the doubling) or memory is short. */
static int ref_gid(Store *s, int32_t gid, int delta) {
    if (gid < 0) {
        PyErr_SetString(PyExc_ValueError, "a group id >= 0");
        return -1;
    }
    if ((size_t)gid >= s->nrefs) {
        size_t n = s->nrefs ? s->nrefs : 64;
        while (n <= (size_t)gid) n *= 2;
        int32_t *refs = PyMem_RawRealloc(s->refs, n * sizeof(int32_t));
        if (!refs) { PyErr_NoMemory(); return -1; }
        memset(refs + s->nrefs, 0, (n - s->nrefs) * sizeof(int32_t));
        s->refs = refs;
        struct gkey **of = PyMem_RawRealloc(s->gkey_of, n * sizeof(struct gkey *));
        if (!of) { PyErr_NoMemory(); return -1; } /* refs grew alone: the next call grows both */
        memset(of + s->nrefs, 0, (n - s->nrefs) * sizeof(struct gkey *));
        s->gkey_of = of;
        s->nrefs = n;
    }
    s->refs[gid] += delta;
    return s->refs[gid];
}

/* -- groups a job may merge into (gmap) ---------------------------------------------------------------------- */

typedef struct gkey {
    struct gkey *next;
    uint64_t hash;
    int32_t code;      /* what intern answered: gid * 2 + has-resource-attributes */
    size_t len;
    uint8_t data[];    /* framed resource header, then framed scope header (see header_key) */
} gkey_t;

/* The gmap key of one ScopeSpans and its hash: a 4-byte length of the framed resource header, then both framed
 * headers (what Python's group table is keyed by). NULL when malformed or memory is short. */
static uint8_t *header_key(const Store *s, const scope_ref *sc, size_t *len, uint64_t *hash) {
    Py_ssize_t rl = framed_header_into(sc->res, sc->res_len, NULL);
    Py_ssize_t sl = framed_header_into(sc->scope, sc->scope_len, NULL);
    if (rl < 0 || sl < 0 || rl > (Py_ssize_t)UINT32_MAX) return NULL;
    uint8_t *k = PyMem_RawMalloc(4 + (size_t)rl + (size_t)sl);
    if (!k) return NULL;
    uint32_t r32 = (uint32_t)rl;
    memcpy(k, &r32, 4);
    framed_header_into(sc->res, sc->res_len, k + 4);
    framed_header_into(sc->scope, sc->scope_len, k + 4 + rl);
    *len = 4 + (size_t)rl + (size_t)sl;
    *hash = siphash13(&s->memo_key, k, *len); /* the memo's key, which is never re-keyed */
    return k;
}

static int32_t gmap_find(Store *s, const uint8_t *key, size_t len, uint64_t h) {
    if (!s->gmap_cap) return -1;
    for (gkey_t *g = s->gmap[h & (s->gmap_cap - 1)]; g; g = g->next)
        if (g->hash == h && g->len == len && memcmp(g->data, key, len) == 0) return g->code;
    return -1;
}

/* Remembers a group that holds chunks (a no-op when it is known, or when memory is short: the map only saves
 * trips to Python). */
static void gmap_add(Store *s, int32_t code, const uint8_t *key, size_t len, uint64_t h) {
    int32_t gid = code >> 1;
    if (gid < 0 || (size_t)gid >= s->nrefs || !s->gkey_of || s->gkey_of[gid] || s->refs[gid] <= 0) return;
    if (gmap_find(s, key, len, h) >= 0) return;
    if (s->gmap_n + 1 > s->gmap_cap) {
        size_t cap = s->gmap_cap ? s->gmap_cap * 2 : 64;
        gkey_t **t = PyMem_RawCalloc(cap, sizeof(gkey_t *));
        if (!t) return;
        for (size_t i = 0; i < s->gmap_cap; i++)
            for (gkey_t *g = s->gmap[i], *n; g; g = n) {
                n = g->next;
                g->next = t[g->hash & (cap - 1)];
                t[g->hash & (cap - 1)] = g;
            }
        PyMem_RawFree(s->gmap);
        s->gmap = t;
        s->gmap_cap = cap;
    }
    gkey_t *g = PyMem_RawMalloc(sizeof(gkey_t) + len);
    if (!g) return;
    g->hash = h;
    g->code = code;
    g->len = len;
    memcpy(g->data, key, len);
    g->next = s->gmap[h & (s->gmap_cap - 1)];
    s->gmap[h & (s->gmap_cap - 1)] = g;
    s->gmap_n++;
    s->gkey_of[gid] = g;
}

/* A group's last chunk went: a job may no longer merge into it (Python drops it once told). */
static void gmap_forget(Store *s, int32_t gid) {
    gkey_t *g = s->gkey_of && (size_t)gid < s->nrefs ? s->gkey_of[gid] : NULL;
    if (!g) return;
    gkey_t **p = &s->gmap[g->hash & (s->gmap_cap - 1)];
    while (*p != g) p = &(*p)->next;
    *p = g->next;
    s->gkey_of[gid] = NULL;
    s->gmap_n--;
    PyMem_RawFree(g);
}

/* Grows a chunk's capacity to at least need bytes (its contents unchanged); 0 when memory is short. */
static int chunk_reserve(chunk_t *c, size_t need) {
    if (need <= c->cap) return 1;
    if (need > UINT32_MAX) return 0;
    size_t cap = c->cap + c->cap / 2;
    if (cap < need) cap = need;
    if (cap < 256) cap = 256;
    if (cap > UINT32_MAX) cap = UINT32_MAX;
    uint8_t *d = PyMem_RawRealloc(c->data, cap);
    if (!d) return 0;
    c->data = d;
    c->cap = (uint32_t)cap;
    return 1;
}

/* Appends a field-2 framed child into capacity reserved beforehand (cannot fail); returns the offset of the framing. */
static uint32_t chunk_put(chunk_t *c, const uint8_t *data, size_t len) {
    uint32_t at = c->len;
    uint8_t *o = c->data + c->len;
    *o++ = 0x12;
    o += wire_put_varint(o, len);
    memcpy(o, data, len);
    c->len = (uint32_t)(o + len - c->data);
    return at;
}

/* Frees an entry's pending chunks (intake undo: they were never counted in refs). */
static void free_pending(entry_t *e) {
    chunk_t *c = e->pending;
    while (c) {
        chunk_t *n = c->next;
        PyMem_RawFree(c->data);
        PyMem_RawFree(c);
        c = n;
    }
    e->pending = NULL;
}

/* Group ids whose last chunk went (finish reports them to Python); collected without the GIL. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} gid_list;

static void free_chunks(Store *s, chunk_t *c, gid_list *released) {
    while (c) {
        chunk_t *n = c->next;
        /* a buffered chunk's gid was counted in refs at intake: in range, no error to raise (no GIL here) */
        if (--s->refs[c->gid] == 0) gmap_forget(s, c->gid);
        if (s->refs[c->gid] == 0 && released) { /* Python forgets it too, once told */
            if (released->n == released->cap) {
                size_t cap = released->cap ? released->cap * 2 : 64;
                int32_t *ids = PyMem_RawRealloc(released->ids, cap * sizeof(int32_t));
                if (ids) {
                    released->ids = ids;
                    released->cap = cap;
                }
            }
            if (released->n < released->cap) released->ids[released->n++] = c->gid;
        }
        PyMem_RawFree(c->data);
        PyMem_RawFree(c);
        c = n;
    }
}

static void unlink_entry(Store *s, entry_t *e) {
    entry_t **p = &s->table[tid_hash(&s->hkey, e->tid) & (s->tcap - 1)];
    while (*p != e) p = &(*p)->hnext;
    *p = e->hnext;
    if (e->prev) e->prev->next = e->next; else s->head = e->next;
    if (e->next) e->next->prev = e->prev; else s->tail = e->prev;
    if (e->in_roots) {
        if (e->rprev) e->rprev->rnext = e->rnext; else s->rhead = e->rnext;
        if (e->rnext) e->rnext->rprev = e->rprev; else s->rtail = e->rprev;
    }
    s->count--;
    s->nbytes -= e->nbytes;
    s->nspans -= e->nspans;
}

static void destroy_entry(Store *s, entry_t *e, gid_list *released) {
    free_chunks(s, e->chunks, released);
    free_chunks(s, e->logs, released);
    PyMem_RawFree(e);
}

/* -- span reading ------------------------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *data, *tid;
    size_t len;
    uint64_t start, end, hits, present, classes;
    int32_t scope, name_index;
    uint8_t root, error, exception, valid;
} span_t;

/* The class bits of one attribute of a read-all key: which value-reading policies (regex, numeric) its value
 * satisfies, from the memo, else from the Python classifier (taking the GIL for the call when the caller runs
 * without it: `nogil`). A failing answer sets the top bit: "ask the policies about this trace in Python". The memo
 * is shared by every thread that parses, so it is read and written under memo_lock, which is never held while
 * waiting for the GIL. */
static uint64_t classify(Store *s, Py_ssize_t key_index, const uint8_t *kv, size_t len, int nogil) {
    uint64_t h = siphash13(&s->memo_key, kv, len) ^ ((uint64_t)key_index * 0x9E3779B97F4A7C15ULL);
    int memo = len <= CLASS_MEMO_MAX_LEN;
    if (memo) {
        PyThread_acquire_lock(s->memo_lock, WAIT_LOCK);
        if (!s->classes_memo) s->classes_memo = PyMem_RawCalloc(CLASS_MEMO, sizeof(struct class_slot));
        struct class_slot *slot = s->classes_memo ? &s->classes_memo[h & (CLASS_MEMO - 1)] : NULL;
        if (slot && slot->used && slot->hash == h && slot->key_index == key_index && slot->len == len &&
            memcmp(slot->kv, kv, len) == 0) {
            uint64_t bits = slot->bits;
            PyThread_release_lock(s->memo_lock);
            return bits;
        }
        PyThread_release_lock(s->memo_lock);
    }
    PyGILState_STATE gil = nogil ? PyGILState_Ensure() : PyGILState_LOCKED;
    PyObject *r = PyObject_CallFunction(s->classifier, "ny#", key_index, (const char *)kv, (Py_ssize_t)len);
    uint64_t bits = r ? PyLong_AsUnsignedLongLong(r) : (uint64_t)-1;
    Py_XDECREF(r);
    int failed = PyErr_Occurred() != NULL;
    if (failed) PyErr_Clear();
    if (nogil) PyGILState_Release(gil);
    if (failed) return 1ULL << 63; /* not remembered: the next occurrence asks again */
    if (memo) {
        PyThread_acquire_lock(s->memo_lock, WAIT_LOCK);
        if (s->classes_memo) {
            struct class_slot *slot = &s->classes_memo[h & (CLASS_MEMO - 1)];
            slot->used = 1;
            slot->hash = h;
            slot->bits = bits;
            slot->key_index = key_index;
            slot->len = (uint32_t)len;
            memcpy(slot->kv, kv, len);
        }
        PyThread_release_lock(s->memo_lock);
    }
    return bits;
}

static int read_span(Store *s, span_t *sp, int nogil) {
    wire_cur c = wire_span(sp->data, sp->len);
    wire_field f;
    uint64_t status = 0; /* merged over repeated status fields */
    int r;
    size_t tid_len = 0;
    sp->root = 1;
    sp->name_index = -1;
    while ((r = wire_next(&c, &f)) == 1) {
        switch (f.number) {
        case 1:
            if (f.wtype != 2) return 0;
            sp->tid = f.data; tid_len = f.len;
            break;
        case 4:
            if (f.wtype != 2) return 0;
            sp->root = f.len == 0;
            break;
        case 5:
            if (f.wtype != 2) return 0;
            sp->name_index = -1;
            for (Py_ssize_t i = 0; i < s->nnames; i++)
                if ((size_t)s->name_lens[i] == f.len && memcmp(s->names[i], f.data, f.len) == 0) {
                    sp->name_index = (int32_t)i;
                    break;
                }
            break;
        case 7:
            if (f.wtype != 1) return 0;
            sp->start = f.value;
            break;
        case 8:
            if (f.wtype != 1) return 0;
            sp->end = f.value;
            break;
        case 9: {
            if (f.wtype != 2) return 0;
            if (!s->nkeys) break;
            wire_cur kc = wire_span(f.data, f.len);
            wire_field kf;
            const uint8_t *key = NULL;
            size_t key_len = 0;
            int kr;
            while ((kr = wire_next(&kc, &kf)) == 1)
                if (kf.number == 1 && kf.wtype == 2) { key = kf.data; key_len = kf.len; }
            if (kr < 0) return 0;
            if (!key) break;
            for (Py_ssize_t k = 0; k < s->nkeys; k++) {
                key_t_ *kk = &s->keys[k];
                if ((size_t)kk->len != key_len || memcmp(kk->pattern, key, key_len) != 0) continue;
                if (!kk->gated) {
                    sp->present |= 1ULL << kk->bit;
                    if (s->classifier) sp->classes |= classify(s, k, f.data, f.len, nogil);
                } else {
                    sp->hits |= gate_hits(kk->gate_data, kk->gate_lens, kk->ngates, f.data, f.len) << kk->bit;
                }
                break;
            }
            break;
        }
        case 11: {
            if (f.wtype != 2) return 0;
            int hit = event_is_exception(f.data, f.len);
            if (hit < 0) return 0;
            sp->exception |= (uint8_t)hit;
            break;
        }
        case 15: {
            if (f.wtype != 2) return 0;
            if (status_code(f.data, f.len, &status) < 0) return 0;
            sp->error = status == 2;
            break;
        }
        default:
            break;
        }
    }
    if (r < 0) return 0;
    sp->valid = (uint8_t)valid_trace_id(sp->tid, tid_len);
    return 1;
}


/* Pass 1 of intake: every ScopeSpans (its resource and scope) and every span's facts, into growing arrays.
 * 1: read, 0: bytes this store does not read, -1: out of memory. Reads only what `Store.__init__` set (and the
 * classifier memo, under its lock), so `Store.parse` runs it without the GIL and without the stage's lock
 * (`nogil`: classify takes the GIL back for a classifier call); allocates with PyMem_Raw*. */
static int parse_request(Store *s, const uint8_t *data, size_t len, span_t **spans_out, Py_ssize_t *nspans_out,
                         scope_ref **scopes_out, Py_ssize_t *nscopes_out, int nogil) {
    span_t *spans = NULL;
    scope_ref *scopes = NULL;
    Py_ssize_t nspans = 0, nscopes = 0, span_cap = 0, scope_cap = 0;
    int status = 1;
    wire_cur c = wire_span(data, len);
    wire_field f;
    int r = 0;
    while (status > 0 && (r = wire_next(&c, &f)) == 1) {
        if (f.number != 1) continue;
        if (f.wtype != 2) { status = 0; break; }
        wire_cur rc = wire_span(f.data, f.len);
        wire_field rf;
        int rr;
        while ((rr = wire_next(&rc, &rf)) == 1) {
            if (rf.number != 2) continue;
            if (rf.wtype != 2) { rr = -1; break; }
            if (nscopes == scope_cap) {
                scope_cap = scope_cap ? scope_cap * 2 : 8;
                scope_ref *n = PyMem_RawRealloc(scopes, sizeof(scope_ref) * (size_t)scope_cap);
                if (!n) { status = -1; break; }
                scopes = n;
            }
            scopes[nscopes] = (scope_ref){f.data, rf.data, f.len, rf.len};
            wire_cur sc = wire_span(rf.data, rf.len);
            wire_field sf;
            int sr;
            while ((sr = wire_next(&sc, &sf)) == 1) {
                if (sf.number != 2) continue;
                if (sf.wtype != 2) { sr = -1; break; }
                if (nspans == span_cap) {
                    span_cap = span_cap ? span_cap * 2 : 256;
                    span_t *n = PyMem_RawRealloc(spans, sizeof(span_t) * (size_t)span_cap);
                    if (!n) { status = -1; break; }
                    spans = n;
                }
                span_t *sp = &spans[nspans];
                memset(sp, 0, sizeof(*sp));
                sp->data = sf.data;
                sp->len = sf.len;
                sp->scope = (int32_t)nscopes;
                if (!read_span(s, sp, nogil)) { sr = -1; break; }
                nspans++;
            }
            if (status < 0) break;
            if (sr < 0) { rr = -1; break; }
            nscopes++;
        }
        if (status < 0) break;
        if (rr < 0) { status = 0; break; }
    }
    if (status > 0 && r < 0) status = 0;
    *spans_out = spans;
    *nspans_out = nspans;
    *scopes_out = scopes;
    *nscopes_out = nscopes;
    return status;
}

/* -- Store methods ------------------------------------------------------------------------------------------ */

static int Store_traverse(Store *s, visitproc visit, void *arg) {
    Py_VISIT(s->names_obj);
    Py_VISIT(s->keys_obj);
    Py_VISIT(s->classifier);
    return 0;
}

/* Breaks reference cycles: the classifier is a bound method of the Python object that owns this store. The name
 * and key tuples stay (the tables point into their bytes; they hold no references back). */
static int Store_clear(Store *s) {
    Py_CLEAR(s->classifier);
    return 0;
}

static void Store_dealloc(Store *s) {
    PyObject_GC_UnTrack(s);
    entry_t *e = s->head;
    while (e) {
        entry_t *n = e->next;
        destroy_entry(s, e, NULL);
        e = n;
    }
    PyMem_RawFree(s->table);
    PyMem_RawFree(s->young.slots);
    PyMem_RawFree(s->old.slots);
    for (size_t i = 0; i < s->gmap_cap; i++)
        for (gkey_t *g = s->gmap[i], *n; g; g = n) {
            n = g->next;
            PyMem_RawFree(g);
        }
    PyMem_RawFree(s->gmap);
    PyMem_RawFree(s->gkey_of);
    PyMem_RawFree(s->refs);
    PyMem_RawFree(s->batch);
    PyMem_RawFree(s->names);
    PyMem_RawFree(s->name_lens);
    for (Py_ssize_t i = 0; s->keys && i < s->nkeys; i++) {
        PyMem_RawFree(s->keys[i].gate_data);
        PyMem_RawFree(s->keys[i].gate_lens);
    }
    PyMem_RawFree(s->keys);
    Py_XDECREF(s->names_obj);
    Py_XDECREF(s->keys_obj);
    Py_XDECREF(s->classifier);
    PyMem_RawFree(s->classes_memo);
    if (s->memo_lock) PyThread_free_lock(s->memo_lock);
    pthread_mutex_destroy(&s->mu);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *Store_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Store *s = (Store *)PyType_GenericNew(type, args, kw);
    if (s && pthread_mutex_init(&s->mu, NULL) != 0) {
        s->table = NULL;
        Py_DECREF(s);
        PyErr_SetString(PyExc_RuntimeError, "Store: no mutex");
        return NULL;
    }
    return (PyObject *)s;
}

static int Store_init(Store *s, PyObject *args, PyObject *kw) {
    PyObject *names, *keys;
    int max_spans;
    Py_ssize_t cache_size;
    if (!PyArg_ParseTuple(args, "O!O!in", &PyTuple_Type, &names, &PyTuple_Type, &keys, &max_spans, &cache_size))
        return -1;
    if (s->table) {
        PyErr_SetString(PyExc_RuntimeError, "Store is initialised once");
        return -1;
    }
    Py_INCREF(names);
    s->names_obj = names;
    Py_INCREF(keys);
    s->keys_obj = keys;
    s->nnames = PyTuple_GET_SIZE(names);
    s->names = PyMem_RawCalloc((size_t)s->nnames + 1, sizeof(uint8_t *));
    s->name_lens = PyMem_RawCalloc((size_t)s->nnames + 1, sizeof(Py_ssize_t));
    s->nkeys = PyTuple_GET_SIZE(keys);
    s->keys = PyMem_RawCalloc((size_t)s->nkeys + 1, sizeof(key_t_));
    if (!s->names || !s->name_lens || !s->keys) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < s->nnames; i++) {
        PyObject *n = PyTuple_GET_ITEM(names, i);
        if (!PyBytes_Check(n)) { PyErr_SetString(PyExc_TypeError, "names: a tuple of bytes"); return -1; }
        s->names[i] = (const uint8_t *)PyBytes_AS_STRING(n);
        s->name_lens[i] = PyBytes_GET_SIZE(n);
    }
    int hit_bit = 0, present_bit = 0;
    for (Py_ssize_t i = 0; i < s->nkeys; i++) {
        PyObject *pair = PyTuple_GET_ITEM(keys, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_TypeError, "keys: a tuple of (bytes, gates | None)");
            return -1;
        }
        PyObject *gates = PyTuple_GET_ITEM(pair, 1);
        s->keys[i].pattern = (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 0));
        s->keys[i].len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0));
        if (gates == Py_None) {
            s->keys[i].bit = present_bit++;
        } else {
            if (!PyTuple_Check(gates)) { PyErr_SetString(PyExc_TypeError, "gates: a tuple of bytes"); return -1; }
            for (Py_ssize_t g = 0; g < PyTuple_GET_SIZE(gates); g++)
                if (!PyBytes_Check(PyTuple_GET_ITEM(gates, g))) {
                    PyErr_SetString(PyExc_TypeError, "gates: a tuple of bytes");
                    return -1;
                }
            size_t ngates = (size_t)PyTuple_GET_SIZE(gates);
            s->keys[i].gated = 1;
            s->keys[i].ngates = ngates;
            s->keys[i].gate_data = PyMem_RawCalloc(ngates + 1, sizeof(uint8_t *));
            s->keys[i].gate_lens = PyMem_RawCalloc(ngates + 1, sizeof(size_t));
            if (!s->keys[i].gate_data || !s->keys[i].gate_lens) { PyErr_NoMemory(); return -1; }
            for (size_t g = 0; g < ngates; g++) {
                PyObject *gate = PyTuple_GET_ITEM(gates, (Py_ssize_t)g);
                s->keys[i].gate_data[g] = (const uint8_t *)PyBytes_AS_STRING(gate);
                s->keys[i].gate_lens[g] = (size_t)PyBytes_GET_SIZE(gate);
            }
            s->keys[i].bit = hit_bit;
            hit_bit += (int)PyTuple_GET_SIZE(gates);
        }
    }
    if (hit_bit > 64 || present_bit > 64) {
        PyErr_SetString(PyExc_ValueError, "at most 64 attribute gates and 64 read-all keys");
        return -1;
    }
    if (max_spans < 1 || cache_size < 2) { PyErr_SetString(PyExc_ValueError, "bad limits"); return -1; }
    if (!hash_key_random(&s->hkey) || !hash_key_random(&s->memo_key)) return -1;
    if (!s->memo_lock && !(s->memo_lock = PyThread_allocate_lock())) { PyErr_NoMemory(); return -1; }
    s->max_spans = max_spans;
    s->half = (size_t)(cache_size / 2);
    s->tcap = 1024;
    s->table = PyMem_RawCalloc(s->tcap, sizeof(entry_t *));
    if (!s->table || !cache_alloc(&s->young, s->half) || !cache_alloc(&s->old, s->half)) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

#define READY(s)                                                                    \
    if (!(s)->table) {                                                              \
        PyErr_SetString(PyExc_RuntimeError, "Store.__init__ was not called");       \
        return NULL;                                                                \
    }

static PyObject *late_item(int32_t gid, const uint8_t *data, size_t len, int root, int32_t code) {
    return Py_BuildValue("(iy#Ni)", (int)gid, (const char *)data, (Py_ssize_t)len, PyBool_FromLong(root),
                         (int)code);
}

/* Takes `mu` on a thread that holds the GIL: without giving the GIL away when it is free, else waiting for it
 * without the GIL (a job may hold it while it merges). */
static void store_lock(Store *s) {
    if (pthread_mutex_trylock(&s->mu) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&s->mu);
        Py_END_ALLOW_THREADS
    }
    __atomic_store_n(&s->mu_owner, pthread_self(), __ATOMIC_RELAXED);
}

/* `mu` on a thread without the GIL (a job). */
static void store_lock_nogil(Store *s) {
    pthread_mutex_lock(&s->mu);
    __atomic_store_n(&s->mu_owner, pthread_self(), __ATOMIC_RELAXED);
}

static void store_unlock(Store *s) {
    __atomic_store_n(&s->mu_owner, (pthread_t)0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&s->mu);
}

/* Whether this thread holds `mu`: a job freed while a method holds it (its last reference dropped under `mu`,
 * e.g. by the garbage collector) must not wait for it. The owner field is never this thread's id unless this
 * thread holds `mu` (it is cleared before every unlock). */
static int store_locked_here(Store *s) {
    return pthread_equal(__atomic_load_n(&s->mu_owner, __ATOMIC_RELAXED), pthread_self());
}

/* -- merge: intake's passes 2 and 3, without Python --------------------------------------------------------- */

/* A span of a trace decided before (its decision's code: the low bit says kept). */
typedef struct {
    int32_t gid, code;
    const uint8_t *data;
    size_t len;
    uint8_t root;
} late_t;

/* What a merge found for Python to act on. */
typedef struct {
    uint8_t *full;            /* ids (16 bytes each) of traces that reached max_spans, in listing order */
    size_t nfull, full_cap;
    late_t *late;
    size_t nlate, late_cap;
    int32_t *unused;          /* groups the request named that hold no chunk now (Python forgets them) */
    size_t nunused, unused_cap;
    Py_ssize_t dropped, invalid, added;
} merge_out;

/* Room for one more item in a growing array; 0 when memory is short. */
static int room_for_one(void **items, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return 1;
    size_t c = *cap ? *cap * 2 : 16;
    void *grown = PyMem_RawRealloc(*items, c * size);
    if (!grown) return 0;
    *items = grown;
    *cap = c;
    return 1;
}

static int out_unused(merge_out *o, int32_t gid) {
    if (!room_for_one((void **)&o->unused, &o->unused_cap, o->nunused, sizeof(int32_t))) return 0;
    o->unused[o->nunused++] = gid;
    return 1;
}

static void merge_out_free(merge_out *o) {
    PyMem_RawFree(o->full);
    PyMem_RawFree(o->late);
    PyMem_RawFree(o->unused);
    memset(o, 0, sizeof(*o));
}

/* intake's answer: (full_ids, late, late_dropped, invalid, unused_gids, added). */
static PyObject *merge_result(const merge_out *o) {
    PyObject *full = PyList_New((Py_ssize_t)o->nfull), *late = PyList_New((Py_ssize_t)o->nlate);
    PyObject *unused = PyList_New((Py_ssize_t)o->nunused);
    if (!full || !late || !unused) goto fail;
    for (size_t i = 0; i < o->nfull; i++) {
        PyObject *t = PyBytes_FromStringAndSize((const char *)o->full + 16 * i, 16);
        if (!t) goto fail;
        PyList_SET_ITEM(full, (Py_ssize_t)i, t);
    }
    for (size_t i = 0; i < o->nlate; i++) {
        const late_t *l = &o->late[i];
        PyObject *item = late_item(l->gid, l->data, l->len, l->root, l->code);
        if (!item) goto fail;
        PyList_SET_ITEM(late, (Py_ssize_t)i, item);
    }
    for (size_t i = 0; i < o->nunused; i++) {
        PyObject *g = PyLong_FromLong(o->unused[i]);
        if (!g) goto fail;
        PyList_SET_ITEM(unused, (Py_ssize_t)i, g);
    }
    return Py_BuildValue("(NNnnNn)", full, late, o->dropped, o->invalid, unused, o->added);
fail:
    Py_XDECREF(full);
    Py_XDECREF(late);
    Py_XDECREF(unused);
    return NULL;
}

/* Passes 2 and 3 of an intake: the parsed spans into their traces, with `gids` (intern codes, one per scope;
 * every gid < nrefs). Called with `mu` held; calls no Python, so a job runs it without the GIL.
 * 1 merged; 0 memory is short, or (`spare_batch`) a span belongs to a trace of the open batch, which is being
 * decided: the store is as it was (`out` may hold a part: the caller frees it). */
static int merge_spans(Store *s, const span_t *spans, Py_ssize_t nspans, Py_ssize_t nscopes, const int32_t *gids,
                       double now, merge_out *out, int spare_batch) {
    entry_t **order = NULL, **targets = NULL, **fresh = NULL, **fresh_tab = NULL;
    chunk_t **span_chunk = NULL, **touched = NULL;
    uint8_t *scope_used = NULL;
    size_t fresh_cap = 16;
    Py_ssize_t nfresh = 0, ntouched = 0;
    int ok = 0;

    /* pass 2: resolve every span's trace and reserve all memory the request needs; nothing visible changes
     * here (new entries are not linked yet, new chunks wait on their entry's `pending` list, existing chunks
     * only grow their capacity), so a failure undoes the scratch fields and returns with the store as it was */
    targets = PyMem_RawCalloc((size_t)nspans + 1, sizeof(entry_t *));
    span_chunk = PyMem_RawCalloc((size_t)nspans + 1, sizeof(chunk_t *));
    touched = PyMem_RawMalloc(sizeof(chunk_t *) * (size_t)(nspans + 1));
    fresh = PyMem_RawMalloc(sizeof(entry_t *) * (size_t)(nspans + 1));
    order = PyMem_RawMalloc(sizeof(entry_t *) * (size_t)(nspans + 1));
    scope_used = PyMem_RawCalloc((size_t)nscopes + 1, 1);
    while (fresh_cap < (size_t)nspans * 2 + 2) fresh_cap <<= 1;
    fresh_tab = PyMem_RawCalloc(fresh_cap, sizeof(entry_t *));
    if (!targets || !span_chunk || !touched || !fresh || !order || !scope_used || !fresh_tab) goto undo;
    {
        entry_t *last = NULL;
        size_t norder = 0;
        int32_t cur_scope = -1;
        for (Py_ssize_t i = 0; i <= nspans; i++) {
            const span_t *sp = i < nspans ? &spans[i] : NULL;
            if (!sp || sp->scope != cur_scope) {
                /* traces that reach max_spans in this scope pass, in first-appearance order */
                for (size_t k = 0; k < norder; k++) {
                    entry_t *e = order[k];
                    if (!e->full_pending) continue;
                    e->full_pending = 0;
                    if (!room_for_one((void **)&out->full, &out->full_cap, out->nfull, 16)) goto undo;
                    memcpy(out->full + 16 * out->nfull++, e->tid, 16);
                }
                norder = 0;
                if (!sp) break;
                cur_scope = sp->scope;
                s->serial++;
            }
            if (!sp->valid) { out->invalid++; continue; }
            int32_t gid = gids[sp->scope] >> 1;
            entry_t *e;
            if (last && memcmp(last->tid, sp->tid, 16) == 0) {
                e = last;
            } else {
                e = find_entry(s, sp->tid);
                if (e && e->selected && spare_batch) goto undo;
                if (!e) {
                    size_t mask = fresh_cap - 1, b = (size_t)tid_hash(&s->hkey, sp->tid) & mask;
                    while (fresh_tab[b] && memcmp(fresh_tab[b]->tid, sp->tid, 16) != 0) b = (b + 1) & mask;
                    e = fresh_tab[b];
                    if (!e) {
                        int32_t code = cache_get(s, sp->tid);
                        if (code >= 0) {
                            if (code & 1) {
                                if (!room_for_one((void **)&out->late, &out->late_cap, out->nlate, sizeof(late_t)))
                                    goto undo;
                                out->late[out->nlate++] = (late_t){gid, code, sp->data, sp->len, sp->root};
                            } else {
                                out->dropped++;
                            }
                            last = NULL;
                            continue;
                        }
                        if (!(e = alloc_entry(s, sp->tid, now))) goto undo;
                        fresh_tab[b] = e;
                        fresh[nfresh++] = e;
                    }
                }
                last = e;
            }
            if (e->mark != s->serial) {
                e->mark = s->serial;
                order[norder++] = e;
            }
            chunk_t *ch = e->chunks;
            while (ch && ch->gid != gid) ch = ch->next;
            if (!ch) {
                chunk_t *tail = NULL;
                for (ch = e->pending; ch && ch->gid != gid; ch = ch->next) tail = ch;
                if (!ch) {
                    if (!(ch = PyMem_RawCalloc(1, sizeof(chunk_t)))) goto undo;
                    ch->gid = gid;
                    if (tail) tail->next = ch; else e->pending = ch;
                }
            }
            if (!ch->reserve) touched[ntouched++] = ch;
            uint64_t grow = ch->reserve + 1 + wire_varint_size(sp->len) + sp->len;
            if ((uint64_t)ch->len + grow > UINT32_MAX) goto undo;
            ch->reserve = grow;
            targets[i] = e;
            span_chunk[i] = ch;
            scope_used[sp->scope] = 1;
            out->added++;
            if (e->nspans + ++e->adding == s->max_spans) e->full_pending = 1;
        }
    }
    for (Py_ssize_t k = 0; k < ntouched; k++)
        if (!chunk_reserve(touched[k], (size_t)touched[k]->len + (size_t)touched[k]->reserve)) goto undo;
    while (s->count + (size_t)nfresh > s->tcap)
        if (!grow_table(s)) goto undo;
    /* groups this request leaves without any buffered chunk (reported once; refs marks restored in `undo`) */
    for (Py_ssize_t i = 0; i < nscopes; i++)
        if (scope_used[i] && s->refs[gids[i] >> 1] == 0) s->refs[gids[i] >> 1] = -2;
    for (Py_ssize_t i = 0; i < nscopes; i++) {
        int32_t gid = gids[i] >> 1;
        if (s->refs[gid] != 0) continue;
        s->refs[gid] = -1;
        if (!out_unused(out, gid)) goto undo;
    }
    for (Py_ssize_t i = 0; i < nscopes; i++)
        if (s->refs[gids[i] >> 1] < 0) s->refs[gids[i] >> 1] = 0;

    /* pass 3: commit (cannot fail: every allocation was made above) */
    for (Py_ssize_t k = 0; k < nfresh; k++) link_entry(s, fresh[k]);
    for (Py_ssize_t i = 0; i < nspans; i++) {
        entry_t *e = targets[i];
        if (!e || !e->pending) continue;
        chunk_t **at = &e->chunks;
        while (*at) at = &(*at)->next;
        *at = e->pending;
        for (chunk_t *c = e->pending; c; c = c->next) s->refs[c->gid]++;
        e->pending = NULL;
    }
    {
        size_t norder = 0;
        int32_t cur_scope = -1;
        for (Py_ssize_t i = 0; i < nspans; i++) {
            const span_t *sp = &spans[i];
            entry_t *e = targets[i];
            if (sp->scope != cur_scope) {
                end_scope_pass(s, order, &norder, now);
                cur_scope = sp->scope;
                s->serial++;
            }
            if (!e) continue;
            if (e->mark != s->serial) {
                e->mark = s->serial;
                order[norder++] = e;
            }
            chunk_t *ch = span_chunk[i];
            if (gids[sp->scope] & 1) e->has_res = 1;
            uint32_t at = chunk_put(ch, sp->data, sp->len);
            if (sp->root) {
                e->root_gid = ch->gid;
                e->root_at = at;
                e->root_len = (uint32_t)sp->len;
                if (!e->in_roots) e->root_pending = 1;
            }
            e->nspans++;
            e->nbytes += (int64_t)sp->len;
            s->nbytes += (int64_t)sp->len;
            s->nspans++;
            e->error |= sp->error;
            e->exception |= sp->exception;
            if (sp->start < e->start) e->start = sp->start;
            if (sp->end > e->end) e->end = sp->end;
            if (sp->name_index >= 0 && sp->end >= sp->start) {
                uint64_t diff = sp->end - sp->start; /* past int64 it stays "longer than any threshold" */
                int64_t took = diff > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)diff;
                if (took > e->durs[sp->name_index]) e->durs[sp->name_index] = took;
            }
            e->hits |= sp->hits;
            e->present |= sp->present;
            e->classes |= sp->classes;
            e->adding = 0;
        }
        end_scope_pass(s, order, &norder, now);
    }
    for (Py_ssize_t k = 0; k < ntouched; k++) touched[k]->reserve = 0;
    ok = 1;
    goto out;

undo: /* the store as it was: scratch fields cleared, pending chunks and unlinked entries freed */
    for (Py_ssize_t k = 0; k < ntouched; k++) touched[k]->reserve = 0;
    for (Py_ssize_t i = 0; targets && i < nspans; i++) {
        entry_t *e = targets[i];
        if (!e) continue;
        e->adding = 0;
        e->full_pending = 0;
        free_pending(e);
    }
    for (Py_ssize_t k = 0; k < nfresh; k++) {
        free_pending(fresh[k]);
        PyMem_RawFree(fresh[k]);
    }
    if (scope_used)
        for (Py_ssize_t i = 0; i < nscopes; i++)
            if (s->refs[gids[i] >> 1] < 0) s->refs[gids[i] >> 1] = 0;
out:
    PyMem_RawFree(order);
    PyMem_RawFree(targets);
    PyMem_RawFree(span_chunk);
    PyMem_RawFree(touched);
    PyMem_RawFree(fresh);
    PyMem_RawFree(fresh_tab);
    PyMem_RawFree(scope_used);
    return ok;
}

/* Each scope's group from the gmap (no Python): 1 all known, 0 not (the request goes to intake). `mu` held. */
static int known_gids(Store *s, const scope_ref *scopes, Py_ssize_t nscopes, int32_t *gids) {
    for (Py_ssize_t i = 0; i < nscopes; i++) {
        size_t len;
        uint64_t h;
        uint8_t *key = header_key(s, &scopes[i], &len, &h);
        if (!key) return 0;
        int32_t code = gmap_find(s, key, len, h);
        PyMem_RawFree(key);
        if (code < 0) return 0;
        gids[i] = code;
    }
    return 1;
}

/* -- Parsed: pass 1 of an intake, done ahead (and the merge too, when a job may) ---------------------------- */

/* What `Store.parse` read of one request: the spans' facts, pointing into the request's bytes (held here). The
 * pipeline calls `parse` before it takes the stage's lock, without the GIL, so the walk overlaps other requests'
 * work; `intake` then only merges. Used once: intake takes the arrays.
 * A job made with `now` (parse_job) also merges, still without the GIL, when every group it names is in the
 * gmap and none of its spans belongs to a trace of the open batch (whose traces are being decided under the
 * stage's lock while merges go on): the request is then buffered, and `complete_plain` or intake hands Python
 * what intake would have answered. Its groups stay pinned (refs + 1 each) until then, so none of them goes
 * before Python has read the answer. */
typedef struct {
    PyObject_HEAD
    Store *store;
    Py_buffer buf;
    int has_buf;
    int status; /* parse_request's answer: 1 read, 0 not read by this store; below 0 not usable (PARSE_*) */
    int counted; /* counted in the store's `parsing` (a job from parse_job, until run_jobs is done with it) */
    span_t *spans;
    scope_ref *scopes;
    Py_ssize_t nspans, nscopes;
    int merge;         /* this job may merge (parse_job was given `now`) */
    double now;
    merge_out out;     /* PARSE_MERGED: what the merge found */
    int32_t *pins;     /* PARSE_MERGED: the intern codes of the pinned groups (one per scope) */
    Py_ssize_t npins;
    Py_ssize_t max_traces;  /* the budgets a plain answer must leave the buffer within (see merge_ahead) */
    long long max_bytes;
    Py_ssize_t traces_after;  /* PARSE_BUFFERED: the buffer after the merge (traces, bytes) */
    long long bytes_after;
} Parsed;

enum { PARSE_USED = -1, PARSE_PENDING = -2, PARSE_FAILED = -3, PARSE_MERGED = -4, PARSE_BUFFERED = -5 };

/* Drops a merged job's pins (`mu` held); a group left without chunks goes to out.unused (Python forgets it). */
static int unpin(Parsed *p) {
    Store *s = p->store;
    int ok = 1;
    for (Py_ssize_t i = 0; i < p->npins; i++) {
        int32_t gid = p->pins[i] >> 1;
        if (--s->refs[gid] == 0) {
            gmap_forget(s, gid);
            ok &= out_unused(&p->out, gid);
        }
    }
    PyMem_RawFree(p->pins);
    p->pins = NULL;
    p->npins = 0;
    return ok;
}

static void Parsed_dealloc(Parsed *p) {
    if (p->counted) p->store->parsing--;
    if (p->status == PARSE_MERGED) { /* never completed: its groups are unpinned (Python keeps any left empty) */
        Store *s = p->store;
        int here = store_locked_here(s);
        if (!here) store_lock(s);
        unpin(p);
        if (!here) store_unlock(s);
    }
    merge_out_free(&p->out);
    PyMem_RawFree(p->spans);
    PyMem_RawFree(p->scopes);
    if (p->has_buf) PyBuffer_Release(&p->buf);
    Py_XDECREF(p->store);
    PyObject_Free(p);
}

/* What became of the parse: for tests and the fuzz target (pending, parsed, not_read, failed, merged, buffered,
 * used). */
static PyObject *Parsed_state(Parsed *p, void *closure) {
    switch (p->status) {
    case PARSE_PENDING: return PyUnicode_FromString("pending");
    case PARSE_FAILED: return PyUnicode_FromString("failed");
    case PARSE_USED: return PyUnicode_FromString("used");
    case PARSE_MERGED: return PyUnicode_FromString("merged");
    case PARSE_BUFFERED: return PyUnicode_FromString("buffered");
    case 0: return PyUnicode_FromString("not_read");
    default: return PyUnicode_FromString("parsed");
    }
}

static PyGetSetDef Parsed_getset[] = {
    {"state", (getter)Parsed_state, NULL, "pending, parsed, not_read, failed, merged, buffered or used", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ParsedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "processor.native._tracestore.Parsed",
    .tp_basicsize = sizeof(Parsed),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Parsed_dealloc,
    .tp_getset = Parsed_getset,
    .tp_doc = "One request's spans as Store.parse read them (for one Store.intake of the same bytes).",
};

/* A Parsed holding the bytes, not parsed yet. */
static Parsed *new_parsed(Store *s, PyObject *raw) {
    if (!s->table) {
        PyErr_SetString(PyExc_RuntimeError, "Store.__init__ was not called");
        return NULL;
    }
    if (!PyBytes_CheckExact(raw)) {
        PyErr_SetString(PyExc_TypeError, "parse: bytes");
        return NULL;
    }
    Parsed *p = PyObject_New(Parsed, &ParsedType);
    if (!p) return NULL;
    p->store = NULL;
    p->has_buf = 0;
    p->counted = 0;
    p->spans = NULL;
    p->scopes = NULL;
    p->nspans = p->nscopes = 0;
    p->status = PARSE_PENDING;
    p->merge = 0;
    p->now = 0.0;
    memset(&p->out, 0, sizeof(p->out));
    p->pins = NULL;
    p->npins = 0;
    p->max_traces = -1;
    p->max_bytes = -1;
    p->traces_after = 0;
    p->bytes_after = 0;
    if (PyObject_GetBuffer(raw, &p->buf, PyBUF_SIMPLE) < 0) { Py_DECREF(p); return NULL; }
    p->has_buf = 1;
    Py_INCREF(s);
    p->store = s;
    return p;
}

/* parse_job(raw[, now[, max_traces, max_bytes]]) -> Parsed: `parse`, run later by `_nogil.run_jobs` together
 * with other modules' jobs in one GIL release; with `now` it also merges when it can (see Parsed), and with the
 * budgets too it completes a plain answer itself (see merge_ahead). Counted in `parsing` from here until the
 * batch is done (the classifier must not change meanwhile); a job that was not run, or failed, is not used by
 * intake (it parses again). */
static PyObject *Store_parse_job(Store *s, PyObject *args) {
    PyObject *raw, *now = Py_None;
    Py_ssize_t max_traces = -1;
    long long max_bytes = -1;
    if (!PyArg_ParseTuple(args, "O|OnL", &raw, &now, &max_traces, &max_bytes)) return NULL;
    double at = 0.0;
    if (now != Py_None && (at = PyFloat_AsDouble(now)) == -1.0 && PyErr_Occurred()) return NULL;
    Parsed *p = new_parsed(s, raw);
    if (!p) return NULL;
    p->merge = now != Py_None;
    p->now = at;
    p->max_traces = max_traces;
    p->max_bytes = max_bytes;
    p->counted = 1;
    s->parsing++;
    return (PyObject *)p;
}

/* Whether a merged job's answer asks nothing of Python but counting: no trace reached max_spans, no late span
 * to send, no invalid span, and no group it names is left without chunks once its pins go. `mu` held. */
static int merged_plain(Parsed *p) {
    Store *s = p->store;
    if (p->out.nfull || p->out.nlate || p->out.invalid || p->out.nunused) return 0;
    int plain = 1;
    for (Py_ssize_t i = 0; i < p->npins; i++) plain &= --s->refs[p->pins[i] >> 1] > 0;
    for (Py_ssize_t i = 0; i < p->npins; i++) s->refs[p->pins[i] >> 1]++;
    return plain;
}

/* The merge of a parsed job, without the GIL (see Parsed); the job stays a plain parse when it cannot. A job
 * given budgets whose answer is plain (merged_plain) and leaves the buffer within them is completed here, in the
 * same hold of `mu`: its pins go at once and Python only reads the counts (`complete_plain`, no `mu`). */
static void merge_ahead(Parsed *p) {
    Store *s = p->store;
    int32_t *gids = PyMem_RawMalloc(sizeof(int32_t) * (size_t)(p->nscopes + 1));
    if (!gids) return;
    store_lock_nogil(s);
    if (known_gids(s, p->scopes, p->nscopes, gids)) {
        if (merge_spans(s, p->spans, p->nspans, p->nscopes, gids, p->now, &p->out, 1)) {
            for (Py_ssize_t i = 0; i < p->nscopes; i++) s->refs[gids[i] >> 1]++;
            p->pins = gids;
            p->npins = p->nscopes;
            gids = NULL;
            p->status = PARSE_MERGED;
            if (p->max_traces >= 0 && merged_plain(p) && (Py_ssize_t)s->count <= p->max_traces &&
                s->nbytes <= p->max_bytes) {
                unpin(p); /* leaves no group without chunks (merged_plain): out.unused stays empty */
                p->traces_after = (Py_ssize_t)s->count;
                p->bytes_after = (long long)s->nbytes;
                p->status = PARSE_BUFFERED;
            }
        } else {
            merge_out_free(&p->out);
        }
    }
    store_unlock(s);
    PyMem_RawFree(gids);
    if (p->status == PARSE_MERGED || p->status == PARSE_BUFFERED) {
        PyMem_RawFree(p->spans);
        PyMem_RawFree(p->scopes);
        p->spans = NULL;
        p->scopes = NULL;
    }
}

static int parsed_run(PyObject *job, PyThreadState **ts) {
    Parsed *p = (Parsed *)job;
    if (p->status != PARSE_PENDING) return -1;
    int status = parse_request(p->store, p->buf.buf, (size_t)p->buf.len, &p->spans, &p->nspans, &p->scopes,
                               &p->nscopes, 1);
    p->status = status < 0 ? PARSE_FAILED : status;
    if (status == 1 && p->merge) merge_ahead(p);
    return status < 0 ? -1 : 1;
}

static void parsed_after(PyObject *job) {
    Parsed *p = (Parsed *)job;
    if (p->counted) {
        p->counted = 0;
        p->store->parsing--;
    }
}

static const nogil_job parsed_job = {parsed_run, parsed_after};

/* parse(raw) -> Parsed: intake's first pass, without the GIL. Reads no state intake changes, so it may run on any
 * thread at any time (also during another call on this store). */
static PyObject *Store_parse(Store *s, PyObject *raw) {
    Parsed *p = new_parsed(s, raw);
    if (!p) return NULL;
    int status;
    s->parsing++;
    Py_BEGIN_ALLOW_THREADS
    status = parse_request(s, p->buf.buf, (size_t)p->buf.len, &p->spans, &p->nspans, &p->scopes, &p->nscopes, 1);
    Py_END_ALLOW_THREADS
    s->parsing--;
    if (status < 0) { Py_DECREF(p); return PyErr_NoMemory(); }
    p->status = status;
    return (PyObject *)p;
}

/* A merged job's answer (intake's), its pins dropped. */
static PyObject *complete_merged(Store *s, Parsed *p) {
    store_lock(s);
    int ok = unpin(p);
    store_unlock(s);
    p->status = PARSE_USED;
    PyObject *result = ok ? merge_result(&p->out) : PyErr_NoMemory();
    merge_out_free(&p->out);
    return result;
}

/* complete_plain(job) -> (late spans dropped, traces, bytes buffered after its merge) for a job that buffered its
 * request with a plain answer (see merge_ahead); None for any other (its request, or the answer its job holds,
 * goes to intake). Takes no lock: the job already let go of everything. */
static PyObject *Store_complete_plain(Store *s, PyObject *job) {
    Parsed *p = (Parsed *)job;
    if (!Py_IS_TYPE(job, &ParsedType) || p->store != s || p->status != PARSE_BUFFERED) Py_RETURN_NONE;
    p->status = PARSE_USED;
    return Py_BuildValue("(nnL)", p->out.dropped, p->traces_after, p->bytes_after);
}

/* intake(raw, now, intern[, parsed]) -> (full_ids, late, late_dropped, invalid, unused_gids, added) or None.
 * intern(resource_field, scope_field) -> gid * 2 + has_resource_attrs, called once per ScopeSpans. `parsed`: what
 * `parse` read of these very bytes (used when it is this store's and holds the same buffer; else ignored); a job
 * that merged these bytes already is only completed. */
static PyObject *Store_intake(Store *s, PyObject *args) {
    READY(s);
    Py_buffer buf;
    double now;
    PyObject *intern, *ahead = Py_None;
    if (!PyArg_ParseTuple(args, "y*dO|O", &buf, &now, &intern, &ahead)) return NULL;
    span_t *spans = NULL;
    scope_ref *scopes = NULL;
    int32_t *gids = NULL;
    merge_out out;
    memset(&out, 0, sizeof(out));
    PyObject *result = NULL;
    Py_ssize_t nspans = 0, nscopes = 0;
    int malformed = 0;

    Parsed *p = (Parsed *)ahead;
    int mine = Py_IS_TYPE(ahead, &ParsedType) && p->store == s && p->buf.buf == buf.buf && p->buf.len == buf.len;
    if (mine && p->status == PARSE_MERGED) {
        PyBuffer_Release(&buf);
        return complete_merged(s, p);
    }
    if (mine && p->status == PARSE_BUFFERED) { /* complete_plain was not asked: the same answer, as intake's */
        PyBuffer_Release(&buf);
        p->status = PARSE_USED;
        return merge_result(&p->out);
    }
    /* pass 1: validate the whole request and read every span's facts (no state changes): done ahead by `parse`
     * (without the GIL, before the stage's lock), else here with the GIL (it reads nothing `mu` guards). */
    int parsed;
    if (mine && p->status >= 0) {
        parsed = p->status;
        spans = p->spans;
        scopes = p->scopes;
        nspans = p->nspans;
        nscopes = p->nscopes;
        p->spans = NULL;
        p->scopes = NULL;
        p->nspans = p->nscopes = 0;
        p->status = PARSE_USED;
    } else {
        s->parsing++; /* its classifier calls may let other threads run: the classifier must stay */
        parsed = parse_request(s, buf.buf, (size_t)buf.len, &spans, &nspans, &scopes, &nscopes, 0);
        s->parsing--;
    }
    if (parsed < 0) { PyErr_NoMemory(); goto out; }
    if (!parsed) { Py_INCREF(Py_None); result = Py_None; goto out; }

    /* group ids: headers interned by Python once per scope (validated here, before any state changes) */
    gids = PyMem_RawMalloc(sizeof(int32_t) * (size_t)(nscopes + 1));
    if (!gids) { PyErr_NoMemory(); goto out; }
    PyObject **headers = PyMem_RawCalloc((size_t)nscopes * 2 + 1, sizeof(PyObject *));
    if (!headers) { PyErr_NoMemory(); goto out; }
    for (Py_ssize_t i = 0; i < nscopes && !malformed; i++) {
        headers[2 * i] = framed_header(scopes[i].res, scopes[i].res_len);
        headers[2 * i + 1] = framed_header(scopes[i].scope, scopes[i].scope_len);
        if (!headers[2 * i] || !headers[2 * i + 1]) malformed = -1;
        else if (headers[2 * i] == Py_None || headers[2 * i + 1] == Py_None) malformed = 1;
    }
    for (Py_ssize_t i = 0; i < nscopes && !malformed; i++) {
        PyObject *g = PyObject_CallFunctionObjArgs(intern, headers[2 * i], headers[2 * i + 1], NULL);
        long long v = g ? PyLong_AsLongLong(g) : -1;
        Py_XDECREF(g);
        if (v == -1 && PyErr_Occurred()) {
            malformed = -1;
        } else if (v < 0 || v > MAX_GID_CODE) { /* checked, never narrowed: a gid indexes the refs array */
            PyErr_SetString(PyExc_ValueError, "intern must return a gid * 2 + flag in [0, 2**31)");
            malformed = -1;
        } else {
            gids[i] = (int32_t)v;
        }
    }
    for (Py_ssize_t i = 0; i < nscopes * 2; i++) Py_XDECREF(headers[i]);
    PyMem_RawFree(headers);
    if (malformed < 0) goto out;
    if (malformed) { Py_INCREF(Py_None); result = Py_None; goto out; }

    store_lock(s);
    int merged = 1;
    for (Py_ssize_t i = 0; i < nscopes && merged; i++)
        if (ref_gid(s, gids[i] >> 1, 0) < 0) merged = -1;
    if (merged == 1) {
        merged = merge_spans(s, spans, nspans, nscopes, gids, now, &out, 0);
        /* groups that hold chunks now: later jobs may merge into them without asking Python */
        for (Py_ssize_t i = 0; merged == 1 && i < nscopes; i++) {
            int32_t gid = gids[i] >> 1;
            if (s->gkey_of[gid] || s->refs[gid] <= 0) continue;
            size_t len;
            uint64_t h;
            uint8_t *key = header_key(s, &scopes[i], &len, &h);
            if (key) gmap_add(s, gids[i], key, len, h);
            PyMem_RawFree(key);
        }
    }
    store_unlock(s);
    if (merged == 0) PyErr_NoMemory();
    if (merged == 1) result = merge_result(&out);

out:
    merge_out_free(&out);
    PyMem_RawFree(spans);
    PyMem_RawFree(scopes);
    PyMem_RawFree(gids);
    PyBuffer_Release(&buf);
    return result;
}

/* add_log(tid, gid, data, severity, now) -> -1 (buffered) or the cached decision code (late). */
static PyObject *Store_add_log(Store *s, PyObject *args) {
    READY(s);
    Py_buffer tid, data;
    int gid, severity;
    double now;
    if (!PyArg_ParseTuple(args, "y*iy*id", &tid, &gid, &data, &severity, &now)) return NULL;
    PyObject *result = NULL;
    if (tid.len != 16 || gid < 0) { PyErr_SetString(PyExc_ValueError, "a 16-byte trace id and a gid"); goto out; }
    /* allocate first (entry, chunk, capacity, refs slot), change state last: a failure changes nothing */
    entry_t *e = find_entry(s, tid.buf), *fresh = NULL;
    if (!e) {
        int32_t code = cache_get(s, tid.buf);
        if (code >= 0) { result = PyLong_FromLong(code); goto out; }
        if (s->count >= s->tcap && !grow_table(s)) { PyErr_NoMemory(); goto out; }
        if (!(e = fresh = alloc_entry(s, tid.buf, now))) { PyErr_NoMemory(); goto out; }
    }
    chunk_t *ch = e->logs, *tail = NULL, *made = NULL;
    for (; ch && ch->gid != gid; ch = ch->next) tail = ch;
    if (!ch && !(ch = made = PyMem_RawCalloc(1, sizeof(chunk_t)))) PyErr_NoMemory();
    if (ch && made) ch->gid = gid;
    if (!ch || ref_gid(s, gid, 0) < 0 ||
        !chunk_reserve(ch, (size_t)ch->len + 1 + wire_varint_size((uint64_t)data.len) + (size_t)data.len)) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        if (made) { PyMem_RawFree(made->data); PyMem_RawFree(made); }
        PyMem_RawFree(fresh);
        goto out;
    }
    if (fresh) link_entry(s, fresh);
    if (made) {
        if (tail) tail->next = made; else e->logs = made;
        s->refs[gid]++;
    }
    chunk_put(ch, data.buf, (size_t)data.len);
    e->nbytes += data.len;
    s->nbytes += data.len;
    e->nlogs++;
    if (severity > e->max_severity) e->max_severity = severity;
    result = PyLong_FromLong(-1);
out:
    PyBuffer_Release(&tid);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *Store_mark_resource(Store *s, PyObject *args) {
    READY(s);
    Py_buffer tid;
    if (!PyArg_ParseTuple(args, "y*", &tid)) return NULL;
    entry_t *e = tid.len == 16 ? find_entry(s, tid.buf) : NULL;
    if (e) e->has_res = 1;
    PyBuffer_Release(&tid);
    Py_RETURN_NONE;
}

static PyObject *Store_cache_put(Store *s, PyObject *args) {
    READY(s);
    Py_buffer tid;
    int code;
    if (!PyArg_ParseTuple(args, "y*i", &tid, &code)) return NULL;
    if (tid.len != 16 || code < 0) {
        PyBuffer_Release(&tid);
        PyErr_SetString(PyExc_ValueError, "a 16-byte trace id and a code >= 0");
        return NULL;
    }
    cache_put(s, tid.buf, code);
    PyBuffer_Release(&tid);
    Py_RETURN_NONE;
}

static PyObject *Store_cache_get(Store *s, PyObject *args) {
    READY(s);
    Py_buffer tid;
    if (!PyArg_ParseTuple(args, "y*", &tid)) return NULL;
    long code = tid.len == 16 ? cache_get(s, tid.buf) : -1;
    PyBuffer_Release(&tid);
    return PyLong_FromLong(code);
}

static int batch_add(Store *s, entry_t *e) {
    if (e->selected) return 1;
    if (s->nbatch == s->batch_cap) {
        Py_ssize_t cap = s->batch_cap ? s->batch_cap * 2 : 256;
        entry_t **b = PyMem_RawRealloc(s->batch, sizeof(entry_t *) * (size_t)cap);
        if (!b) return 0;
        s->batch = b;
        s->batch_cap = cap;
    }
    e->selected = 1;
    s->batch[s->nbatch++] = e;
    return 1;
}

/* The current batch as (records bytes, durations bytes, reasons bytes). */
static PyObject *batch_result(Store *s, const uint8_t *reasons) {
    Py_ssize_t n = s->nbatch;
    PyObject *recs = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(record_t));
    PyObject *durs = PyBytes_FromStringAndSize(NULL, n * s->nnames * (Py_ssize_t)sizeof(int64_t));
    PyObject *why = reasons ? PyBytes_FromStringAndSize((const char *)reasons, n) : PyBytes_FromStringAndSize(NULL, 0);
    if (!recs || !durs || !why) { Py_XDECREF(recs); Py_XDECREF(durs); Py_XDECREF(why); return NULL; }
    record_t *out = (record_t *)PyBytes_AS_STRING(recs);
    int64_t *d = (int64_t *)PyBytes_AS_STRING(durs);
    for (Py_ssize_t i = 0; i < n; i++) {
        entry_t *e = s->batch[i];
        record_t *o = &out[i];
        memset(o, 0, sizeof(*o));
        memcpy(o->tid, e->tid, 16);
        o->first = e->first;
        o->nbytes = e->nbytes;
        o->start = e->start;
        o->end = e->end;
        o->hits = e->hits;
        o->present = e->present;
        o->classes = e->classes;
        o->nspans = e->nspans;
        o->nlogs = e->nlogs;
        o->max_severity = e->max_severity;
        o->error = e->error;
        o->exception = e->exception;
        o->has_res = e->has_res;
        memcpy(d + i * s->nnames, e->durs, sizeof(int64_t) * (size_t)s->nnames);
    }
    return Py_BuildValue("(NNN)", recs, durs, why);
}

/* Ends the current batch without deciding it: its traces stay buffered, unchanged, and can be selected again. */
static void batch_reset(Store *s) {
    for (Py_ssize_t i = 0; i < s->nbatch; i++) s->batch[i]->selected = 0;
    s->nbatch = 0;
}

/* A selection that fails part-way leaves no batch open. */
static PyObject *batch_done(Store *s, PyObject *res) {
    if (!res) batch_reset(s);
    return res;
}

static int batch_open(Store *s) {
    if (s->nbatch) {
        PyErr_SetString(PyExc_RuntimeError, "the previous batch was not finished");
        return 0;
    }
    return 1;
}

/* select_due(now, root_grace, decision_wait): reasons 0 = root_grace, 1 = decision_wait. */
static PyObject *Store_select_due(Store *s, PyObject *args) {
    READY(s);
    double now, grace, wait;
    if (!PyArg_ParseTuple(args, "ddd", &now, &grace, &wait) || !batch_open(s)) return NULL;
    uint8_t *reasons = NULL;
    Py_ssize_t cap = 0;
    for (int pass = 0; pass < 2; pass++) {
        entry_t *e = pass == 0 ? s->rhead : s->head;
        for (; e; e = pass == 0 ? e->rnext : e->next) {
            if (pass == 0 ? e->root_seen + grace > now : e->first > now - wait) break;
            if (e->selected) continue;
            if (!batch_add(s, e)) goto nomem;
            if (s->nbatch > cap) {
                cap = s->batch_cap;
                uint8_t *r = PyMem_RawRealloc(reasons, (size_t)cap);
                if (!r) goto nomem;
                reasons = r;
            }
            reasons[s->nbatch - 1] = (uint8_t)pass;
        }
    }
    PyObject *res = batch_done(s, batch_result(s, reasons));
    PyMem_RawFree(reasons);
    return res;
nomem:
    PyMem_RawFree(reasons);
    batch_reset(s);
    PyErr_NoMemory();
    return NULL;
}

/* select_relieve(max_bytes, max_traces): traces to decide early so the buffer fits again (first rooted
 * traces, then the oldest); reasons 0 = max_bytes, 1 = max_traces. */
static PyObject *Store_select_relieve(Store *s, PyObject *args) {
    READY(s);
    long long max_bytes;
    Py_ssize_t max_traces;
    if (!PyArg_ParseTuple(args, "Ln", &max_bytes, &max_traces) || !batch_open(s)) return NULL;
    int64_t bytes = s->nbytes;
    Py_ssize_t traces = (Py_ssize_t)s->count;
    uint8_t *reasons = NULL;
    entry_t *re = s->rhead, *oe = s->head;
    while (bytes > max_bytes || traces > max_traces) {
        uint8_t why = bytes > max_bytes ? 0 : 1;
        while (re && re->selected) re = re->rnext;
        entry_t *e = re;
        if (!e) {
            while (oe && oe->selected) oe = oe->next;
            e = oe;
        }
        if (!e) break;
        if (!batch_add(s, e)) goto nomem;
        uint8_t *r = PyMem_RawRealloc(reasons, (size_t)s->nbatch);
        if (!r) goto nomem;
        reasons = r;
        reasons[s->nbatch - 1] = why;
        bytes -= e->nbytes;
        traces--;
    }
    PyObject *res = batch_done(s, batch_result(s, reasons));
    PyMem_RawFree(reasons);
    return res;
nomem:
    PyMem_RawFree(reasons);
    batch_reset(s);
    PyErr_NoMemory();
    return NULL;
}

/* select_ids(ids): the listed buffered traces (unknown or repeated ids are skipped). */
static PyObject *Store_select_ids(Store *s, PyObject *args) {
    READY(s);
    PyObject *ids;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &ids) || !batch_open(s)) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ids); i++) {
        PyObject *t = PyList_GET_ITEM(ids, i);
        if (!PyBytes_Check(t) || PyBytes_GET_SIZE(t) != 16) continue;
        entry_t *e = find_entry(s, (const uint8_t *)PyBytes_AS_STRING(t));
        if (e && !batch_add(s, e)) { batch_reset(s); return PyErr_NoMemory(); }
    }
    return batch_done(s, batch_result(s, NULL));
}

static PyObject *Store_select_all(Store *s, PyObject *noargs) {
    READY(s);
    if (!batch_open(s)) return NULL;
    for (entry_t *e = s->head; e; e = e->next)
        if (!batch_add(s, e)) { batch_reset(s); return PyErr_NoMemory(); }
    return batch_done(s, batch_result(s, NULL));
}

static PyObject *chunk_list(chunk_t *c) {
    PyObject *out = PyList_New(0);
    for (; out && c; c = c->next) {
        PyObject *item = Py_BuildValue("(iy#)", (int)c->gid, (const char *)c->data, (Py_ssize_t)c->len);
        if (!item || PyList_Append(out, item) < 0) { Py_XDECREF(item); Py_CLEAR(out); break; }
        Py_DECREF(item);
    }
    return out;
}

/* batch_chunks(i) -> (chunks [(gid, bytes)], log_chunks [(gid, bytes)], root (gid, at, len) | None) */
static PyObject *Store_batch_chunks(Store *s, PyObject *args) {
    READY(s);
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "n", &i)) return NULL;
    if (i < 0 || i >= s->nbatch) { PyErr_SetString(PyExc_IndexError, "batch index"); return NULL; }
    entry_t *e = s->batch[i];
    PyObject *root;
    if (e->root_gid >= 0) root = Py_BuildValue("(iII)", (int)e->root_gid, e->root_at, e->root_len);
    else { Py_INCREF(Py_None); root = Py_None; }
    if (!root) return NULL;
    return Py_BuildValue("(NNN)", chunk_list(e->chunks), chunk_list(e->logs), root);
}

/* Per-group totals of an emission: gid -> index (open addressing), then each group's length, output bytes and
 * write position, in first-seen order. */
typedef struct {
    int32_t *keys, *index;
    size_t cap, n;
    int32_t *gids;
    size_t *lens, *at;
    PyObject **out;
} group_sums;

static int sums_init(group_sums *g, size_t most) {
    memset(g, 0, sizeof(*g));
    g->cap = 16;
    while (g->cap < 2 * most + 1) g->cap *= 2;
    g->keys = PyMem_RawMalloc(g->cap * sizeof(int32_t));
    g->index = PyMem_RawMalloc(g->cap * sizeof(int32_t));
    g->gids = PyMem_RawMalloc((most + 1) * sizeof(int32_t));
    g->lens = PyMem_RawCalloc(most + 1, sizeof(size_t));
    g->at = PyMem_RawCalloc(most + 1, sizeof(size_t));
    g->out = PyMem_RawCalloc(most + 1, sizeof(PyObject *));
    if (!g->keys || !g->index || !g->gids || !g->lens || !g->at || !g->out) return 0;
    for (size_t i = 0; i < g->cap; i++) g->keys[i] = -1;
    return 1;
}

static void sums_free(group_sums *g) {
    for (size_t i = 0; g->out && i < g->n; i++) Py_XDECREF(g->out[i]);
    PyMem_RawFree(g->keys);
    PyMem_RawFree(g->index);
    PyMem_RawFree(g->gids);
    PyMem_RawFree(g->lens);
    PyMem_RawFree(g->at);
    PyMem_RawFree(g->out);
}

/* The index of a group (added at the end when new; `most` at init bounds how many are added). */
static size_t sums_slot(group_sums *g, int32_t gid) {
    size_t h = ((uint32_t)gid * 2654435761u) & (g->cap - 1);
    while (g->keys[h] != gid) {
        if (g->keys[h] < 0) {
            g->keys[h] = gid;
            g->index[h] = (int32_t)g->n;
            g->gids[g->n++] = gid;
            break;
        }
        h = (h + 1) & (g->cap - 1);
    }
    return (size_t)g->index[h];
}

/* The groups' output bytes, allocated at their summed lengths. */
static int sums_alloc(group_sums *g) {
    for (size_t i = 0; i < g->n; i++)
        if (!(g->out[i] = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)g->lens[i]))) return 0;
    return 1;
}

/* Room for len more bytes of a group's output (its length was summed first). */
static uint8_t *sums_reserve(group_sums *g, int32_t gid, size_t len) {
    size_t i = sums_slot(g, gid);
    uint8_t *at = (uint8_t *)PyBytes_AS_STRING(g->out[i]) + g->at[i];
    g->at[i] += len;
    return at;
}

static void sums_put(group_sums *g, int32_t gid, const uint8_t *p, size_t len) {
    memcpy(sums_reserve(g, gid, len), p, len);
}

/* [(gid, bytes)] in first-seen order. */
static PyObject *sums_list(group_sums *g) {
    PyObject *out = PyList_New((Py_ssize_t)g->n);
    for (size_t i = 0; out && i < g->n; i++) {
        PyObject *item = Py_BuildValue("(iO)", (int)g->gids[i], g->out[i]);
        if (!item) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    return out;
}

/* Where the root's chunk frames it (tag 0x12, its length as a varint, the span): the prefix length, or 0 when
 * the chunk does not hold it there (the row then takes the Python path, which reports what it finds). */
static size_t root_prefix(const chunk_t *c, const entry_t *e) {
    size_t prefix = 1 + wire_varint_size(e->root_len);
    if ((size_t)e->root_at + prefix + e->root_len > c->len || c->data[e->root_at] != 0x12) return 0;
    wire_cur cur = wire_span(c->data + e->root_at + 1, prefix - 1);
    uint64_t n;
    if (!wire_varint(&cur, &n) || n != e->root_len || cur.p != cur.end) return 0;
    return prefix;
}

static const chunk_t *root_chunk(const entry_t *e) {
    for (const chunk_t *c = e->chunks; c; c = c->next)
        if (c->gid == e->root_gid) return c;
    return NULL;
}

/* A span's trace_state (field 3) and parent_span_id (field 4) as protobuf reads them, the last occurrence
 * winning: 1 when the span parses, with whether each is non-empty. */
static int span_state_parent(const uint8_t *p, size_t len, int *state, int *parent) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r;
    *state = *parent = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number == 3 && f.wtype == 2) *state = f.len > 0;
        else if (f.number == 4 && f.wtype == 2) *parent = f.len > 0;
    }
    return r == 0;
}

/* What one kept trace adds to the output, and how. */
typedef struct {
    const uint8_t *mark, *state; /* serialized Span fields: the policy's attribute, `ot=th:` (NULL: none) */
    size_t mark_len, state_len;
} emit_how;

/* A chunk of a trace kept by probability, each span with `state` appended as its trace_state (it had none), and
 * `mark` too when the span has no parent (as Python marks them): the output length, written at out unless NULL;
 * (size_t)-1 when a span already has a trace_state (Python then merges the thresholds) or does not parse. */
static size_t rewrite_spans(const chunk_t *c, const emit_how *how, uint8_t *out) {
    wire_cur cur = wire_span(c->data, c->len);
    wire_field f;
    size_t total = 0;
    int r;
    while ((r = wire_next(&cur, &f)) == 1) {
        int has_state, has_parent;
        if (f.number != 2 || f.wtype != 2 || !span_state_parent(f.data, f.len, &has_state, &has_parent) || has_state)
            return (size_t)-1;
        size_t n = f.len + how->state_len + (has_parent ? 0 : how->mark_len);
        if (out) {
            uint8_t *o = out + total;
            *o++ = 0x12;
            o += wire_put_varint(o, n);
            memcpy(o, f.data, f.len);
            memcpy(o + f.len, how->state, how->state_len);
            if (!has_parent) memcpy(o + f.len + how->state_len, how->mark, how->mark_len);
        }
        total += 1 + wire_varint_size(n) + n;
    }
    return r == 0 ? total : (size_t)-1;
}

/* A chunk's output length: as it is, with the root's mark spliced in, or rewritten span by span. */
static size_t emitted_len(const chunk_t *c, const chunk_t *root, const entry_t *e, const emit_how *how) {
    if (how->state) return rewrite_spans(c, how, NULL);
    if (c != root) return c->len;
    return c->len + wire_varint_size(e->root_len + how->mark_len) - wire_varint_size(e->root_len) + how->mark_len;
}

/* Whether this code's way applies to the trace (else Python's): it has a root where its chunk frames it, and
 * for a threshold, spans without a trace_state. */
static int emits_natively(const entry_t *e, const emit_how *how) {
    const chunk_t *root = e->root_gid >= 0 ? root_chunk(e) : NULL;
    if (!root || !root_prefix(root, e)) return 0;
    for (int kind = 0; kind < 2; kind++) /* group codes are >= 0 (group_sums keys -1 as empty) */
        for (const chunk_t *c = kind ? e->logs : e->chunks; c; c = c->next)
            if (c->gid < 0) return 0;
    if (how->state)
        for (const chunk_t *c = e->chunks; c; c = c->next)
            if (rewrite_spans(c, how, NULL) == (size_t)-1) return 0;
    return 1;
}

static void emit_chunk(group_sums *spans, const chunk_t *c, const chunk_t *root, const entry_t *e,
                       const emit_how *how) {
    if (how->state) { /* written where the group's output stands, then its position moves past it */
        size_t i = sums_slot(spans, c->gid);
        spans->at[i] += rewrite_spans(c, how, (uint8_t *)PyBytes_AS_STRING(spans->out[i]) + spans->at[i]);
        return;
    }
    if (c != root) {
        sums_put(spans, c->gid, c->data, c->len);
        return;
    }
    size_t prefix = root_prefix(c, e), at = e->root_at, body = at + prefix, end = body + e->root_len;
    uint8_t head[11];
    head[0] = 0x12;
    size_t head_len = 1 + wire_put_varint(head + 1, e->root_len + how->mark_len);
    sums_put(spans, c->gid, c->data, at);
    sums_put(spans, c->gid, head, head_len);
    sums_put(spans, c->gid, c->data + body, e->root_len);
    sums_put(spans, c->gid, how->mark, how->mark_len);
    sums_put(spans, c->gid, c->data + end, c->len - end);
}

/* An item of a by-code tuple: bytes, or NULL for None; -1 on a wrong type. */
static int bytes_or_none(PyObject *tuple, int32_t code, const uint8_t **p, size_t *len) {
    PyObject *item = PyTuple_GET_ITEM(tuple, code);
    *p = NULL;
    *len = 0;
    if (item == Py_None) return 0;
    if (!PyBytes_Check(item)) {
        PyErr_SetString(PyExc_TypeError, "marks and states: bytes or None");
        return -1;
    }
    *p = (const uint8_t *)PyBytes_AS_STRING(item);
    *len = (size_t)PyBytes_GET_SIZE(item);
    return 0;
}

/* emit_kept(rows: bytes of int32 batch rows, codes: bytes of int32 per row, marks, states: tuples by code of
 * bytes | None) -> (spans [(gid, bytes)], logs [(gid, bytes)], rest: bytes of int32 rows)
 *
 * Kept traces serialized here, their chunks concatenated per group in row order: the root gets the deciding
 * policy's `sampling.policy` attribute (`marks[code]`, a serialized Span field; appending a field to a
 * serialized message merges it), and with `states[code]` (a trace_state `ot=th:...` for a trace kept by
 * probability) every span gets that state and every span without a parent the mark, as `emit.Outbox.add_trace`
 * does. Their log chunks likewise. What is left to Python (no mark for the code, no root, a span with a
 * trace_state of its own) comes back in `rest`. */
static PyObject *Store_emit_kept(Store *s, PyObject *args) {
    READY(s);
    Py_buffer rows_buf, codes_buf;
    PyObject *marks, *states;
    if (!PyArg_ParseTuple(args, "y*y*O!O!", &rows_buf, &codes_buf, &PyTuple_Type, &marks, &PyTuple_Type, &states))
        return NULL;
    PyObject *result = NULL, *rest = NULL;
    group_sums spans, logs;
    memset(&spans, 0, sizeof(spans));
    memset(&logs, 0, sizeof(logs));
    size_t n = (size_t)rows_buf.len / sizeof(int32_t), nrest = 0, nchunks = 0, nlog_chunks = 0;
    const int32_t *rows = rows_buf.buf, *codes = codes_buf.buf;
    emit_how *how = NULL;
    if (rows_buf.len % (Py_ssize_t)sizeof(int32_t) || codes_buf.len != rows_buf.len ||
        PyTuple_GET_SIZE(marks) != PyTuple_GET_SIZE(states)) {
        PyErr_SetString(PyExc_ValueError, "rows and codes: int32, one code per row; marks and states: one per code");
        goto out;
    }
    if (!(rest = PyBytes_FromStringAndSize(NULL, rows_buf.len))) goto out;
    if (!(how = PyMem_RawCalloc(n + 1, sizeof(*how)))) { PyErr_NoMemory(); goto out; }
    int32_t *rest_rows = (int32_t *)PyBytes_AS_STRING(rest);
    for (size_t i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= s->nbatch) { PyErr_SetString(PyExc_IndexError, "batch row"); goto out; }
        if (codes[i] < 0 || codes[i] >= PyTuple_GET_SIZE(marks)) {
            PyErr_SetString(PyExc_IndexError, "decision code without a mark entry");
            goto out;
        }
        if (bytes_or_none(marks, codes[i], &how[i].mark, &how[i].mark_len) < 0 ||
            bytes_or_none(states, codes[i], &how[i].state, &how[i].state_len) < 0)
            goto out;
        const entry_t *e = s->batch[rows[i]];
        if (!how[i].mark || !emits_natively(e, &how[i])) {
            how[i].mark = NULL;
            rest_rows[nrest++] = rows[i];
            continue;
        }
        for (const chunk_t *c = e->chunks; c; c = c->next) nchunks++;
        for (const chunk_t *c = e->logs; c; c = c->next) nlog_chunks++;
    }
    if (!sums_init(&spans, nchunks) || !sums_init(&logs, nlog_chunks)) { PyErr_NoMemory(); goto out; }
    for (size_t i = 0; i < n; i++) {
        if (!how[i].mark) continue;
        const entry_t *e = s->batch[rows[i]];
        const chunk_t *root = root_chunk(e);
        for (const chunk_t *c = e->chunks; c; c = c->next)
            spans.lens[sums_slot(&spans, c->gid)] += emitted_len(c, root, e, &how[i]);
        for (const chunk_t *c = e->logs; c; c = c->next) logs.lens[sums_slot(&logs, c->gid)] += c->len;
    }
    if (!sums_alloc(&spans) || !sums_alloc(&logs)) goto out;
    for (size_t i = 0; i < n; i++) {
        if (!how[i].mark) continue;
        const entry_t *e = s->batch[rows[i]];
        const chunk_t *root = root_chunk(e);
        for (const chunk_t *c = e->chunks; c; c = c->next) emit_chunk(&spans, c, root, e, &how[i]);
        for (const chunk_t *c = e->logs; c; c = c->next) sums_put(&logs, c->gid, c->data, c->len);
    }
    if (_PyBytes_Resize(&rest, (Py_ssize_t)(nrest * sizeof(int32_t))) < 0) goto out;
    PyObject *span_list = sums_list(&spans), *log_list = span_list ? sums_list(&logs) : NULL;
    if (span_list && log_list) result = PyTuple_Pack(3, span_list, log_list, rest);
    Py_XDECREF(span_list);
    Py_XDECREF(log_list);
out:
    sums_free(&spans);
    sums_free(&logs);
    PyMem_RawFree(how);
    Py_XDECREF(rest);
    PyBuffer_Release(&rows_buf);
    PyBuffer_Release(&codes_buf);
    return result;
}

/* finish(codes: bytes of int32, one per batch entry) -> released gids: decisions cached, entries freed. */
static PyObject *Store_finish(Store *s, PyObject *args) {
    READY(s);
    Py_buffer codes;
    if (!PyArg_ParseTuple(args, "y*", &codes)) return NULL;
    if (codes.len != s->nbatch * (Py_ssize_t)sizeof(int32_t)) {
        PyBuffer_Release(&codes);
        PyErr_SetString(PyExc_ValueError, "one int32 code per batch entry");
        return NULL;
    }
    const int32_t *code = codes.buf;
    gid_list gone = {0};
    /* Without the GIL: recording and freeing a batch touches thousands of entries not read for decision_wait
     * (cache misses), and needs no Python object. Every other call on the store is made under the tail-sampling
     * stage's lock, which the caller holds; only parse runs beside it, and parse reads none of this (the trace
     * table, the decision cache, the group counts). Taking the GIL back while holding that lock costs a wait,
     * but once per batch, not per request. */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < s->nbatch; i++) {
        entry_t *e = s->batch[i];
        if (code[i] >= 0) cache_put(s, e->tid, code[i]);
        unlink_entry(s, e);
        destroy_entry(s, e, &gone);
    }
    Py_END_ALLOW_THREADS
    s->nbatch = 0;
    PyBuffer_Release(&codes);
    /* a gid that could not be listed (out of memory) stays with Python's group table: a leak of one entry, as
     * before, never a wrong release */
    PyObject *released = PyList_New((Py_ssize_t)gone.n);
    for (size_t i = 0; released && i < gone.n; i++) {
        PyObject *g = PyLong_FromLong(gone.ids[i]);
        if (!g) Py_CLEAR(released);
        else PyList_SET_ITEM(released, (Py_ssize_t)i, g);
    }
    PyMem_RawFree(gone.ids);
    return released;
}

/* abort(): ends the open batch undecided (its traces stay buffered); a no-op without one. */
static PyObject *Store_abort(Store *s, PyObject *noargs) {
    READY(s);
    batch_reset(s);
    Py_RETURN_NONE;
}

/* batch_size() -> traces in the open batch (0: none open). */
static PyObject *Store_batch_size(Store *s, PyObject *noargs) {
    READY(s);
    return PyLong_FromSsize_t(s->nbatch);
}

/* snapshot() -> [(kind 0 spans | 1 logs, gid, bytes)] of every buffered trace, first-seen order. */
static PyObject *Store_snapshot(Store *s, PyObject *noargs) {
    READY(s);
    PyObject *out = PyList_New(0);
    for (entry_t *e = s->head; out && e; e = e->next)
        for (int kind = 0; kind < 2; kind++)
            for (chunk_t *c = kind ? e->logs : e->chunks; c; c = c->next) {
                PyObject *item = Py_BuildValue("(iiy#)", kind, (int)c->gid, (const char *)c->data,
                                               (Py_ssize_t)c->len);
                if (!item || PyList_Append(out, item) < 0) { Py_XDECREF(item); Py_CLEAR(out); return NULL; }
                Py_DECREF(item);
            }
    return out;
}

static PyObject *Store_ids(Store *s, PyObject *noargs) {
    READY(s);
    PyObject *out = PyList_New(0);
    for (entry_t *e = s->head; out && e; e = e->next) {
        PyObject *t = PyBytes_FromStringAndSize((const char *)e->tid, 16);
        if (!t || PyList_Append(out, t) < 0) { Py_XDECREF(t); Py_CLEAR(out); }
        else Py_DECREF(t);
    }
    return out;
}

static PyObject *Store_refcount(Store *s, PyObject *args) {
    READY(s);
    int gid;
    if (!PyArg_ParseTuple(args, "i", &gid)) return NULL;
    return PyLong_FromLong(gid >= 0 && (size_t)gid < s->nrefs ? s->refs[gid] : 0);
}

static PyObject *Store_stats(Store *s, PyObject *noargs) {
    READY(s);
    return Py_BuildValue("(nLL)", (Py_ssize_t)s->count, (long long)s->nbytes, (long long)s->nspans);
}

/* hash_stats() -> (rekeys, longest hash chain of the trace table now). */
static PyObject *Store_hash_stats(Store *s, PyObject *noargs) {
    READY(s);
    size_t longest = 0;
    for (size_t b = 0; b < s->tcap; b++) {
        size_t n = 0;
        for (entry_t *e = s->table[b]; e; e = e->hnext) n++;
        if (n > longest) longest = n;
    }
    return Py_BuildValue("(Kn)", (unsigned long long)s->rekeys, (Py_ssize_t)longest);
}

/* bucket(tid) -> the trace table's bucket for tid under the current key and size (tests aim floods with it). */
static PyObject *Store_bucket(Store *s, PyObject *args) {
    READY(s);
    Py_buffer tid;
    if (!PyArg_ParseTuple(args, "y*", &tid)) return NULL;
    PyObject *out = tid.len == 16 ? PyLong_FromSize_t((size_t)tid_hash(&s->hkey, tid.buf) & (s->tcap - 1))
                                  : (PyErr_SetString(PyExc_ValueError, "a 16-byte trace id"), NULL);
    PyBuffer_Release(&tid);
    return out;
}

static PyObject *Store_set_classifier(Store *s, PyObject *args) {
    PyObject *fn;
    if (!PyArg_ParseTuple(args, "O", &fn)) return NULL;
    if (!s->table) {
        PyErr_SetString(PyExc_RuntimeError, "Store.__init__ was not called");
        return NULL;
    }
    if (s->parsing) { /* a parse (or a job waiting to parse) reads the classifier and its memo */
        PyErr_SetString(PyExc_RuntimeError, "Store is inside intake or parse (one caller at a time)");
        return NULL;
    }
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "classifier: a callable or None");
        return NULL;
    }
    Py_CLEAR(s->classifier);
    PyThread_acquire_lock(s->memo_lock, WAIT_LOCK);
    PyMem_RawFree(s->classes_memo); /* answers of the previous classifier */
    s->classes_memo = NULL;
    PyThread_release_lock(s->memo_lock);
    if (fn != Py_None) {
        Py_INCREF(fn);
        s->classifier = fn;
    }
    Py_RETURN_NONE;
}

/* The Python-facing methods that read or change the buffered traces, each under `mu` (see Store). Not
 * set_classifier: no merge reads the classifier, and parses are counted in `parsing`. */
#define UNDER_MU(name)                                                          \
    static PyObject *name##_mu(Store *s, PyObject *arg) {                       \
        store_lock(s);                                                          \
        PyObject *result = name(s, arg);                                        \
        store_unlock(s);                                                        \
        return result;                                                          \
    }
UNDER_MU(Store_add_log)
UNDER_MU(Store_mark_resource)
UNDER_MU(Store_cache_put)
UNDER_MU(Store_cache_get)
UNDER_MU(Store_select_due)
UNDER_MU(Store_select_relieve)
UNDER_MU(Store_select_ids)
UNDER_MU(Store_select_all)
UNDER_MU(Store_batch_chunks)
UNDER_MU(Store_emit_kept)
UNDER_MU(Store_finish)
UNDER_MU(Store_abort)
UNDER_MU(Store_batch_size)
UNDER_MU(Store_snapshot)
UNDER_MU(Store_ids)
UNDER_MU(Store_refcount)
UNDER_MU(Store_stats)
UNDER_MU(Store_hash_stats)
UNDER_MU(Store_bucket)

static PyMethodDef Store_methods[] = {
    {"intake", (PyCFunction)Store_intake, METH_VARARGS, "Buffer a serialized ExportTraceServiceRequest."},
    {"parse", (PyCFunction)Store_parse, METH_O, "Intake's first pass on a request, ahead and without the GIL."},
    {"parse_job", (PyCFunction)Store_parse_job, METH_VARARGS,
     "parse (and with `now` the merge), to run later in _nogil.run_jobs (then complete_plain or intake)."},
    {"complete_plain", (PyCFunction)Store_complete_plain, METH_O,
     "(dropped, traces, bytes) for a job that buffered its request with a plain answer, else None."},
    {"set_classifier", (PyCFunction)Store_set_classifier, METH_VARARGS,
     "classify(key index, KeyValue bytes) -> class bits, asked for attributes of read-all keys (None: off)."},
    {"add_log", (PyCFunction)Store_add_log_mu, METH_VARARGS, "Buffer one log record with its trace."},
    {"mark_resource", (PyCFunction)Store_mark_resource_mu, METH_VARARGS, "Flag a trace as having resource attrs."},
    {"cache_put", (PyCFunction)Store_cache_put_mu, METH_VARARGS, "Record a decision code."},
    {"cache_get", (PyCFunction)Store_cache_get_mu, METH_VARARGS, "A cached decision code or -1."},
    {"select_due", (PyCFunction)Store_select_due_mu, METH_VARARGS, "Batch the traces whose time has come."},
    {"select_relieve", (PyCFunction)Store_select_relieve_mu, METH_VARARGS, "Batch traces to decide early."},
    {"select_ids", (PyCFunction)Store_select_ids_mu, METH_VARARGS, "Batch the listed traces."},
    {"select_all", (PyCFunction)Store_select_all_mu, METH_NOARGS, "Batch every buffered trace."},
    {"batch_chunks", (PyCFunction)Store_batch_chunks_mu, METH_VARARGS, "The bytes of one batched trace."},
    {"emit_kept", (PyCFunction)Store_emit_kept_mu, METH_VARARGS,
     "Kept traces that only need their policy mark on the root, serialized per group (the rest: Python)."},
    {"finish", (PyCFunction)Store_finish_mu, METH_VARARGS, "Cache the batch's decisions and free it."},
    {"abort", (PyCFunction)Store_abort_mu, METH_NOARGS, "End the open batch undecided (its traces stay)."},
    {"batch_size", (PyCFunction)Store_batch_size_mu, METH_NOARGS, "Traces in the open batch (0: none)."},
    {"snapshot", (PyCFunction)Store_snapshot_mu, METH_NOARGS, "Every buffered chunk (write-ahead log)."},
    {"ids", (PyCFunction)Store_ids_mu, METH_NOARGS, "Buffered trace ids, first-seen order."},
    {"refcount", (PyCFunction)Store_refcount_mu, METH_VARARGS, "Buffered chunks of a group."},
    {"stats", (PyCFunction)Store_stats_mu, METH_NOARGS, "(traces, bytes, spans) buffered."},
    {"hash_stats", (PyCFunction)Store_hash_stats_mu, METH_NOARGS, "(re-keyings, longest hash chain now)."},
    {"bucket", (PyCFunction)Store_bucket_mu, METH_VARARGS, "The trace table bucket of a trace id (for tests)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "processor.native._tracestore.Store",
    .tp_basicsize = sizeof(Store),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Store_new,
    .tp_init = (initproc)Store_init,
    .tp_dealloc = (destructor)Store_dealloc,
    .tp_traverse = (traverseproc)Store_traverse,
    .tp_clear = (inquiry)Store_clear,
    .tp_free = PyObject_GC_Del,
    .tp_methods = Store_methods,
    .tp_doc = "Buffered traces of the tail-sampling stage.",
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tracestore", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__tracestore(void) {
    if (PyType_Ready(&StoreType) < 0 || PyType_Ready(&ParsedType) < 0 || !nogil_job_register(&ParsedType, &parsed_job))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&StoreType);
    if (PyModule_AddObject(m, "Store", (PyObject *)&StoreType) < 0) {
        Py_DECREF(&StoreType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "RECORD_SIZE", (long)sizeof(record_t)) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
