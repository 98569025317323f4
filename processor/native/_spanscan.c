/* Span-metrics intake in one pass over a serialized ExportTraceServiceRequest.
 *
 * Why: reading a span's name, kind, status, times and a few attributes through protobuf accessors costs
 * ~2-3 us of Python per span. The derived metrics only need, per rule, how many spans (and which durations /
 * weights) fall into each distinct combination of label sources. `scan` walks the wire bytes once and groups
 * the spans of every rule by the raw bytes of the rule's label sources, so Python works per group (a few per
 * rule and request), never per span: it turns each group key into a series slot once and keeps it in a `Slots`;
 * from then on scan adds that group's totals to the aggregation's arrays itself.
 *
 * scan(buf, attr_keys, res_keys, rules, names, resolve, targets[, walked[, room]]) -> outs, or None when the bytes
 * are not what this scanner understands (the caller then uses the pure-Python path, the reference).
 * walk(buf, attr_keys, res_keys, rules, names, resolve) -> walked: scan's pass over the bytes done ahead
 * (the pipeline calls it before the stage's lock); scan given it (same bytes, same key and rule objects) only
 * applies the groups to the targets.
 *   attr_keys: tuple of utf-8 bytes - span attribute keys the rules read
 *   res_keys:  tuple of utf-8 bytes - resource attribute keys the rules read
 *   rules:     tuple of (sources, value_attr, bounds, candidates):
 *              sources: tuple of (type, index): 0 resource attribute res_keys[index], 1 span name, 2 span kind,
 *                       3 status code, 4 span attribute attr_keys[index]
 *              value_attr: -1, or index into attr_keys of a numeric weight (counters); rows whose value is not
 *                       an int or double in [0, 1e300) are skipped; a string value makes scan return None
 *              bounds: None (counter) or a tuple of floats (histogram of span duration in seconds)
 *              candidates: True to report the first span of every (group, bucket) (exemplar candidates)
 *   names:     a Names(max) kept by the caller across calls for these rules: span name -> rule indexes, read
 *              and added to without the GIL; resolve(name bytes) is called for a name not in it and returns
 *              the tuple of rule indexes (then remembered), or None to make scan return None.
 *   targets:   one (known, values, counts, sums, full) per rule: known a Slots(max) kept by the caller across
 *              calls, {group key: series slot, or for a position split ((slot, weight), ...)} (put by Python
 *              for the groups scan left to it); values float64[slots] (counters) or None; counts
 *              int64[slots, len(bounds) + 1] and sums float64[slots] (histograms) or None. Groups found in
 *              the cache are added to these arrays here; the others are left to Python. full: None or
 *              uint8[slots, len(bounds) + 1], nonzero where the exemplar reservoir takes no more candidates.
 *   room:      how many more traces the exemplar reservoir takes before it evicts one; candidates where `full`
 *              is set are reported (`skipped`) only when the request has more candidates than that, since only
 *              an eviction can make room for them. -1 (the default): always reported.
 *   outs: per rule None when every group was applied and no candidate is offered (the usual case once the keys
 *          are known), else (slots, misses, rows, sums, hist, cands, skipped) over its groups (first-seen order):
 *          slots int64[G] (-1: not applied), misses [(group index, key bytes)] of the groups not applied,
 *          rows int64[G] spans per group, sums float64[G] (counters: sum of weights; histograms: sum of
 *          seconds), hist int64[G * (len(bounds) + 1)] or None (rows, sums and hist are None when misses is
 *          empty), cands or None: one record per candidate of int64 group index, bucket, span index, trace id
 *          offset, trace id length, span id offset, span id length (offsets into buf), then uint64 end time and
 *          float64 duration in ns (end - start, 0 when end < start); skipped: the same for candidates where
 *          `full` was set, or None when not reported.
 *
 * A group key is, per source: resource/attribute: 0x00 (absent) or 0x01 + varint length + the raw AnyValue
 * bytes; name: varint length + bytes; kind/status: 4 bytes little-endian int32.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "hash.h"
#include "wire.h"
#include "nogil_job.h"

/* The key of every per-call table here (values, names, groups: hash.h), drawn at import. */
static hash_key scan_key;

#if defined(__GNUC__)
#define HOT __attribute__((flatten))
#else
#define HOT
#endif

enum { SRC_RESOURCE = 0, SRC_NAME = 1, SRC_KIND = 2, SRC_STATUS = 3, SRC_ATTR = 4 };

typedef struct {
    const uint8_t *p;
    size_t len;
    uint64_t hash;
} slice;

typedef struct {
    int type;
    Py_ssize_t index;
} source;

typedef struct {
    source *sources;
    Py_ssize_t nsources;
    Py_ssize_t value_attr;
    double *bounds;
    Py_ssize_t nbounds;
    int candidates;
    int needs_attrs;
} rule_spec;

typedef struct {
    const uint8_t *pattern;
    size_t len;
} key_pattern;

typedef struct {
    int32_t rule;
    uint64_t hash;
    size_t key_off;    /* into the int key arena; rule->nsources ints */
    int64_t rows;
    double sum;
    int64_t hist_off;  /* into hist arena (int64), -1 for counters */
    int64_t cand_off;  /* into cand arena (int32), -1 without candidates */
    int32_t next_in_rule;
} group;

typedef struct {
    const uint8_t *p;
    size_t len;
    int32_t *rules;
    Py_ssize_t nrules;
    int needs_attrs;
} name_entry;

/* Open-addressing set of byte strings (per call): string -> dense id; `recent` holds the last id looked up per
 * `recent_bucket`, compared before hashing. */
typedef struct {
    slice *items;
    size_t n, cap;
    int32_t *table;
    size_t table_cap;
    int32_t recent[RECENT_SLOTS];
} interner;

/* The byte-string key that starts every entry of the tables kept across calls (Names, Slots): open addressing,
 * linear probing, keyed by scan_key, doubled at half full. A table is an array of `size`-byte entries. */
typedef struct {
    uint64_t hash;
    uint8_t *key; /* owned (PyMem_Raw); NULL: empty entry */
    size_t len;
} keyed;

#define KEYED_AT(items, size, i) ((keyed *)((uint8_t *)(items) + (i) * (size)))

/* The entry of p[:len] (hash h), or NULL. */
static void *keyed_find(void *items, size_t mask, size_t size, const uint8_t *p, size_t len, uint64_t h) {
    if (!items) return NULL;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        keyed *k = KEYED_AT(items, size, i);
        if (!k->key) return NULL;
        if (k->hash == h && k->len == len && memcmp(k->key, p, len) == 0) return k;
    }
}

/* An empty entry for hash h, holding a copy of p[:len] (the caller fills the rest); the table grows first when
 * half full. NULL out of memory (nothing added). No GIL needed. */
static void *keyed_add(void **items, size_t *mask, size_t count, size_t size, const uint8_t *p, size_t len,
                       uint64_t h) {
    if (!*items || (count + 1) * 2 > *mask + 1) {
        size_t cap = *items ? (*mask + 1) * 2 : 64;
        void *fresh = PyMem_RawCalloc(cap, size);
        if (!fresh) return NULL;
        for (size_t i = 0; *items && i <= *mask; i++) {
            keyed *k = KEYED_AT(*items, size, i);
            if (!k->key) continue;
            size_t j = (size_t)k->hash & (cap - 1);
            while (KEYED_AT(fresh, size, j)->key) j = (j + 1) & (cap - 1);
            memcpy(KEYED_AT(fresh, size, j), k, size);
        }
        PyMem_RawFree(*items);
        *items = fresh;
        *mask = cap - 1;
    }
    uint8_t *copy = PyMem_RawMalloc(len ? len : 1);
    if (!copy) return NULL;
    if (len) memcpy(copy, p, len);
    size_t i = (size_t)h & *mask;
    while (KEYED_AT(*items, size, i)->key) i = (i + 1) & *mask;
    keyed *k = KEYED_AT(*items, size, i);
    memset(k, 0, size);
    k->hash = h;
    k->key = copy;
    k->len = len;
    return k;
}

/* The span names' rules across calls: name bytes -> rule indexes, as resolve() answered (bounded: past `max`
 * names, new ones are resolved on every call that meets them). A walk on any thread reads and adds to it without
 * the GIL, so a request of known names needs the GIL for nothing. Its lock is held only for memory work, never
 * while waiting for the GIL, so a thread holding the GIL may take it too. Holds no Python object. */
typedef struct {
    keyed k;
    int32_t *rules; /* owned (PyMem_Raw) */
    Py_ssize_t nrules;
} known_name;

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    known_name *slots;
    size_t mask, count, max;
} Names;

static void Names_dealloc(Names *n) {
    if (n->slots)
        for (size_t i = 0; i <= n->mask; i++) {
            PyMem_RawFree(n->slots[i].k.key);
            PyMem_RawFree(n->slots[i].rules);
        }
    PyMem_RawFree(n->slots);
    if (n->lock) PyThread_free_lock(n->lock);
    Py_TYPE(n)->tp_free((PyObject *)n);
}

static PyObject *Names_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max", NULL};
    Py_ssize_t max;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &max)) return NULL;
    if (max < 1) {
        PyErr_SetString(PyExc_ValueError, "max >= 1");
        return NULL;
    }
    Names *n = (Names *)type->tp_alloc(type, 0);
    if (!n) return NULL;
    n->max = (size_t)max;
    if (!(n->lock = PyThread_allocate_lock())) {
        Py_DECREF(n);
        return PyErr_NoMemory();
    }
    return (PyObject *)n;
}

static PyObject *Names_len(Names *n, PyObject *unused) {
    PyThread_acquire_lock(n->lock, WAIT_LOCK);
    size_t count = n->count;
    PyThread_release_lock(n->lock);
    return PyLong_FromSize_t(count);
}

static PyMethodDef Names_methods[] = {
    {"count", (PyCFunction)Names_len, METH_NOARGS, "Span names known now."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject NamesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "processor.native._spanscan.Names",
    .tp_basicsize = sizeof(Names),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Names_new,
    .tp_dealloc = (destructor)Names_dealloc,
    .tp_methods = Names_methods,
    .tp_doc = "Names(max): span name -> rule indexes, kept across scan() / walk() calls.",
};

static known_name *names_find(const Names *n, const uint8_t *p, size_t len, uint64_t h) {
    return keyed_find(n->slots, n->mask, sizeof(known_name), p, len, h);
}

/* A copy of the rules known for p[:len] into *rules / *nrules (PyMem_Raw, caller frees). 1 known, 0 not, -1 out
 * of memory. No GIL needed. */
static int names_get(Names *n, const uint8_t *p, size_t len, uint64_t h, int32_t **rules, Py_ssize_t *nrules) {
    int found = 0;
    PyThread_acquire_lock(n->lock, WAIT_LOCK);
    known_name *k = names_find(n, p, len, h);
    if (k) {
        *rules = PyMem_RawMalloc((size_t)(k->nrules ? k->nrules : 1) * sizeof(int32_t));
        if (*rules) {
            if (k->nrules) memcpy(*rules, k->rules, (size_t)k->nrules * sizeof(int32_t));
            *nrules = k->nrules;
            found = 1;
        } else {
            found = -1;
        }
    }
    PyThread_release_lock(n->lock);
    return found;
}

/* Remembers rules for p[:len] (another thread may have added it meanwhile; a full table takes no more). Best
 * effort: out of memory only means the name is resolved again next time. No GIL needed. */
static void names_put(Names *n, const uint8_t *p, size_t len, uint64_t h, const int32_t *rules, Py_ssize_t nrules) {
    PyThread_acquire_lock(n->lock, WAIT_LOCK);
    if (n->count < n->max && !names_find(n, p, len, h)) {
        int32_t *copy = PyMem_RawMalloc((size_t)(nrules ? nrules : 1) * sizeof(int32_t));
        known_name *k = copy ? keyed_add((void **)&n->slots, &n->mask, n->count, sizeof(known_name), p, len, h)
                             : NULL;
        if (k) {
            if (nrules) memcpy(copy, rules, (size_t)nrules * sizeof(int32_t));
            k->rules = copy;
            k->nrules = nrules;
            n->count++;
        } else {
            PyMem_RawFree(copy);
        }
    }
    PyThread_release_lock(n->lock);
}

/* A rule's series slots across calls: group key bytes -> the series slot (counters, histograms) or, for a position
 * split, its (slot, weight) pairs, as Python resolved them (`NativeIntake._slot`). scan adds a request's groups
 * whose key is here straight into the aggregation's arrays, so a request of known groups makes no Python object
 * per group (a dict of bytes keys needed a bytes object and its hash for every group of every request). Bounded:
 * past `max` keys, new ones are resolved by Python on every call that meets them. Used with the GIL held only
 * (scan's apply and Python), so it needs no lock of its own. Holds no Python object. */
typedef struct {
    keyed k;
    int64_t slot;          /* the series slot; -1 for a position split */
    int64_t *pair_slots;   /* position split: npairs slots (owned, one block with the weights) */
    double *pair_weights;
    Py_ssize_t npairs;
} known_group;

typedef struct {
    PyObject_HEAD
    known_group *items;
    size_t mask, count, max;
} Slots;

static void Slots_dealloc(Slots *t) {
    if (t->items)
        for (size_t i = 0; i <= t->mask; i++) {
            PyMem_RawFree(t->items[i].k.key);
            PyMem_RawFree(t->items[i].pair_slots);
        }
    PyMem_RawFree(t->items);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *Slots_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max", NULL};
    Py_ssize_t max;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &max)) return NULL;
    if (max < 1) {
        PyErr_SetString(PyExc_ValueError, "max >= 1");
        return NULL;
    }
    Slots *t = (Slots *)type->tp_alloc(type, 0);
    if (t) t->max = (size_t)max;
    return (PyObject *)t;
}

static known_group *slots_find(const Slots *t, const uint8_t *p, size_t len, uint64_t h) {
    return keyed_find(t->items, t->mask, sizeof(known_group), p, len, h);
}

/* get(key) -> slot (int), ((slot, weight), ...) for a position split, or None. */
static PyObject *Slots_get(Slots *t, PyObject *key) {
    if (!PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "key must be bytes");
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(key);
    size_t len = (size_t)PyBytes_GET_SIZE(key);
    const known_group *k = slots_find(t, p, len, siphash13(&scan_key, p, len));
    if (!k) Py_RETURN_NONE;
    if (k->slot >= 0) return PyLong_FromLongLong(k->slot);
    PyObject *pairs = PyTuple_New(k->npairs);
    for (Py_ssize_t i = 0; pairs && i < k->npairs; i++) {
        PyObject *pair = Py_BuildValue("(Ld)", (long long)k->pair_slots[i], k->pair_weights[i]);
        if (!pair) Py_CLEAR(pairs);
        else PyTuple_SET_ITEM(pairs, i, pair);
    }
    return pairs;
}

/* put(key, slot or ((slot, weight), ...)) -> True when remembered, False when `max` keys are known already. */
static PyObject *Slots_put(Slots *t, PyObject *args) {
    PyObject *key, *value;
    if (!PyArg_ParseTuple(args, "O!O", &PyBytes_Type, &key, &value)) return NULL;
    int64_t slot = -1;
    Py_ssize_t npairs = 0;
    int64_t *pair_slots = NULL;
    if (PyLong_Check(value)) {
        slot = PyLong_AsLongLong(value);
        if (slot == -1 && PyErr_Occurred()) return NULL;
        if (slot < 0) {
            PyErr_SetString(PyExc_ValueError, "a slot is >= 0");
            return NULL;
        }
    } else if (PyTuple_Check(value)) {
        npairs = PyTuple_GET_SIZE(value);
        pair_slots = PyMem_RawMalloc((size_t)(npairs ? npairs : 1) * (sizeof(int64_t) + sizeof(double)));
        if (!pair_slots) return PyErr_NoMemory();
        double *weights = (double *)(pair_slots + (npairs ? npairs : 1));
        for (Py_ssize_t i = 0; i < npairs; i++) {
            PyObject *pair = PyTuple_GET_ITEM(value, i);
            long long ps;
            double w;
            if (!PyTuple_Check(pair) || !PyArg_ParseTuple(pair, "Ld", &ps, &w) || ps < 0) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "pairs of (slot >= 0, weight)");
                PyMem_RawFree(pair_slots);
                return NULL;
            }
            pair_slots[i] = ps;
            weights[i] = w;
        }
    } else {
        PyErr_SetString(PyExc_TypeError, "value must be a slot or a tuple of (slot, weight) pairs");
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(key);
    size_t len = (size_t)PyBytes_GET_SIZE(key);
    uint64_t h = siphash13(&scan_key, p, len);
    known_group *k = slots_find(t, p, len, h);
    if (!k) {
        if (t->count >= t->max) {
            PyMem_RawFree(pair_slots);
            Py_RETURN_FALSE;
        }
        if (!(k = keyed_add((void **)&t->items, &t->mask, t->count, sizeof(known_group), p, len, h))) {
            PyMem_RawFree(pair_slots);
            return PyErr_NoMemory();
        }
        t->count++;
    }
    PyMem_RawFree(k->pair_slots);
    k->slot = slot;
    k->pair_slots = pair_slots;
    k->pair_weights = pair_slots ? (double *)(pair_slots + (npairs ? npairs : 1)) : NULL;
    k->npairs = npairs;
    Py_RETURN_TRUE;
}

static PyObject *Slots_count(Slots *t, PyObject *unused) { return PyLong_FromSize_t(t->count); }

static PyMethodDef Slots_methods[] = {
    {"get", (PyCFunction)Slots_get, METH_O, "The slot, or position-split pairs, of a group key; None if unknown."},
    {"put", (PyCFunction)Slots_put, METH_VARARGS, "Remembers a group key's slot or pairs; False when full."},
    {"count", (PyCFunction)Slots_count, METH_NOARGS, "Group keys known now."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SlotsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "processor.native._spanscan.Slots",
    .tp_basicsize = sizeof(Slots),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Slots_new,
    .tp_dealloc = (destructor)Slots_dealloc,
    .tp_methods = Slots_methods,
    .tp_doc = "Slots(max): a rule's group key bytes -> series slot or position-split pairs, kept across scan() calls.",
};

typedef struct {
    /* immutable inputs */
    key_pattern *attr_keys;
    Py_ssize_t nattr;
    key_pattern *res_keys;
    Py_ssize_t nres;
    rule_spec *rules;
    Py_ssize_t nrules;
    Names *names_known;
    PyObject *resolve;
    const uint8_t *base;
    /* groups: open addressing table of group indexes */
    group *groups;
    size_t ngroups, groups_cap;
    int32_t *table;
    size_t table_cap;
    int32_t *rule_first, *rule_last;
    int32_t *ikeys;
    size_t ikeys_len, ikeys_cap;
    int64_t *hist;
    size_t hist_len, hist_cap;
    int32_t *cands;
    size_t cands_len, cands_cap;
    /* spans table */
    uint8_t *spans;
    size_t nspans, spans_cap;
    /* per-call interning: span names (with their rules) and attribute values */
    interner names;
    name_entry *name_info;
    size_t name_info_cap;
    interner values;
    /* scratch */
    int32_t *scratch;
    size_t scratch_cap;
    int32_t *attr_ids; /* per span: value id of each wanted attribute, -1 absent */
    int32_t *res_ids;  /* per resource */
    uint8_t *keybuf;   /* a group's key bytes while its slot is looked up (scan's apply) */
    size_t keybuf_cap;
} scanner;

#define SPAN_RECORD 48
/* A candidate as scan reports it: group index, bucket, span index, then the span's record (SPAN_RECORD bytes). */
#define CAND_WORDS (3 + SPAN_RECORD / 8)
#define CAND_BYTES (CAND_WORDS * 8)

/* The walk over the request runs without the GIL (so another stage can use the second core meanwhile); the
 * few steps that touch Python objects (a span name seen for the first time, setting an exception) take it
 * back through WITH_GIL. walk_ts is this thread's state while it walks without the GIL, NULL otherwise. Every
 * allocation here is PyMem_Raw*, which needs no GIL. */
static _Thread_local PyThreadState *walk_ts = NULL;
#define WITH_GIL(stmt)                                                                                        \
    do {                                                                                                      \
        PyThreadState *ts_ = walk_ts;                                                                         \
        if (ts_) { walk_ts = NULL; PyEval_RestoreThread(ts_); }                                               \
        stmt;                                                                                                 \
        if (ts_) walk_ts = PyEval_SaveThread();                                                               \
    } while (0)

/* Makes room for `more` items of `size` bytes in a growable array; 0 on failure (exception set). */
static int grow(void **arr, size_t *cap, size_t used, size_t more, size_t size) {
    if (used + more <= *cap) return 1;
    size_t want = *cap ? *cap : 64;
    while (want < used + more) {
        if (want > ((size_t)PY_SSIZE_T_MAX / 2) / size) { WITH_GIL(PyErr_NoMemory()); return 0; }
        want *= 2;
    }
    void *p = PyMem_RawRealloc(*arr, want * size);
    if (!p) { WITH_GIL(PyErr_NoMemory()); return 0; }
    *arr = p;
    *cap = want;
    return 1;
}

/* Doubles an open-addressing table of int32 ids (hash of id i from hashes[i]). 0 on failure. */
static int rehash(int32_t **table, size_t *cap, size_t n, const void *items, size_t stride, size_t hash_at) {
    size_t new_cap = *cap * 2;
    int32_t *t = PyMem_RawMalloc(new_cap * sizeof(int32_t));
    if (!t) { WITH_GIL(PyErr_NoMemory()); return 0; }
    memset(t, 0xFF, new_cap * sizeof(int32_t));
    for (size_t j = 0; j < n; j++) {
        uint64_t h;
        memcpy(&h, (const uint8_t *)items + j * stride + hash_at, 8);
        size_t q = (size_t)h & (new_cap - 1);
        while (t[q] >= 0) q = (q + 1) & (new_cap - 1);
        t[q] = (int32_t)j;
    }
    PyMem_RawFree(*table);
    *table = t;
    *cap = new_cap;
    return 1;
}

/* Id of a byte string; *is_new tells whether it was added. -1 on a Python error. */
static int32_t intern(interner *in, const uint8_t *p, size_t len, int *is_new) {
    size_t bucket = recent_bucket(p, len);
    int32_t id = in->recent[bucket];
    *is_new = 0;
    if (id >= 0 && in->items[id].len == len && memcmp(in->items[id].p, p, len) == 0) return id;
    uint64_t h = siphash13(&scan_key, p, len);
    size_t mask = in->table_cap - 1, slot = (size_t)h & mask;
    while ((id = in->table[slot]) >= 0) {
        const slice *e = &in->items[id];
        if (e->hash == h && e->len == len && memcmp(e->p, p, len) == 0) {
            in->recent[bucket] = id;
            return id;
        }
        slot = (slot + 1) & mask;
    }
    if (in->n >= INT32_MAX / 2) {
        WITH_GIL(PyErr_SetString(PyExc_OverflowError, "too many distinct values"));
        return -1;
    }
    if (!grow((void **)&in->items, &in->cap, in->n, 1, sizeof(slice))) return -1;
    id = (int32_t)in->n++;
    in->items[id].p = p;
    in->items[id].len = len;
    in->items[id].hash = h;
    in->table[slot] = id;
    in->recent[bucket] = id;
    *is_new = 1;
    if (in->n * 2 > in->table_cap && !rehash(&in->table, &in->table_cap, in->n, in->items, sizeof(slice),
                                             offsetof(slice, hash)))
        return -1;
    return id;
}

static int interner_init(interner *in, size_t cap) {
    in->table_cap = cap;
    in->table = PyMem_RawMalloc(cap * sizeof(int32_t));
    if (!in->table) { PyErr_NoMemory(); return 0; }
    memset(in->table, 0xFF, cap * sizeof(int32_t));
    memset(in->recent, 0xFF, sizeof(in->recent));
    return 1;
}

static int find_key(const key_pattern *keys, Py_ssize_t n, const uint8_t *p, size_t len) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (keys[i].len == len && memcmp(keys[i].pattern, p, len) == 0) return (int)i;
    return -1;
}

/* Reads a KeyValue: key, and value (an empty AnyValue when the field is missing: what the parsed message
 * shows). 1 ok, 0 malformed/unsupported. */
static inline int read_kv(const uint8_t *p, size_t len, const uint8_t **key, size_t *key_len,
                          const uint8_t **value, size_t *value_len) {
    /* fast path: exactly one key field then one value field, each with a one-byte length */
    if (len >= 4 && p[0] == 0x0A && p[1] < 0x80 && (size_t)p[1] + 4 <= len && p[2 + p[1]] == 0x12 &&
        p[3 + p[1]] < 0x80 && (size_t)p[1] + 4 + p[3 + p[1]] == len) {
        *key = p + 2;
        *key_len = p[1];
        *value = p + 4 + p[1];
        *value_len = p[3 + p[1]];
        return 1;
    }
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r, seen_value = 0;
    *key = p;
    *key_len = 0;
    *value = p;
    *value_len = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number == 1) {
            if (f.wtype != 2) return 0;
            *key = f.data;
            *key_len = f.len;
        } else if (f.number == 2) {
            if (f.wtype != 2 || seen_value) return 0; /* a repeated message field would be merged: not here */
            seen_value = 1;
            *value = f.data;
            *value_len = f.len;
        }
    }
    return r == 0;
}

/* Numeric weight of an AnyValue (like any_number): 1 number in *out, 0 no number, -1 string (ask Python),
 * -2 malformed. */
static int any_number(const uint8_t *p, size_t len, double *out) {
    wire_cur c = wire_span(p, len);
    wire_field f = {0};
    int r, kind = 0;
    uint64_t value = 0;
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number < 1 || f.number > 7) continue;
        int expect = (f.number == 2 || f.number == 3) ? 0 : (f.number == 4 ? 1 : 2);
        if (f.wtype != expect) return -2;
        kind = (int)f.number;
        if (kind == 3 || kind == 4) value = f.value;
    }
    if (r < 0) return -2;
    if (kind == 3) { *out = (double)(int64_t)value; return 1; }
    if (kind == 4) { memcpy(out, &value, 8); return 1; }
    if (kind == 1) return -1;
    return 0;
}

typedef struct {
    const uint8_t *name;
    size_t name_len;
    int32_t kind, code;
    uint64_t start, end;
    const uint8_t *tid, *sid;
    size_t tid_len, sid_len;
} span_fields;

/* Adds one span to one rule's group. Returns 1, or 0 on a Python error, or -1 to give up (unsupported). */
static inline int add_row(scanner *s, int32_t ri, const span_fields *sp, int32_t name_id, double seconds,
                          size_t span_index) {
    rule_spec *rule = &s->rules[ri];
    double weight = 1.0;
    if (rule->value_attr >= 0) {
        int32_t vid = s->attr_ids[rule->value_attr];
        if (vid < 0) return 1; /* no weight: the span adds nothing */
        const slice *v = &s->values.items[vid];
        int k = any_number(v->p, v->len, &weight);
        if (k < 0) return -1;
        if (k == 0 || !(weight >= 0 && weight < 1e300)) return 1;
    }
    size_t n = (size_t)rule->nsources;
    int32_t *key = s->scratch + 1; /* scratch[0] is the rule, so one hash covers rule and sources */
    s->scratch[0] = ri;
    for (size_t i = 0; i < n; i++) {
        const source *src = &rule->sources[i];
        int32_t v;
        switch (src->type) {
        case SRC_RESOURCE: v = s->res_ids[src->index]; break;
        case SRC_ATTR: v = s->attr_ids[src->index]; break;
        case SRC_NAME: v = name_id; break;
        case SRC_KIND: v = sp->kind; break;
        default: v = sp->code;
        }
        key[i] = v;
    }
    uint64_t h = siphash13(&scan_key, (const uint8_t *)s->scratch, (n + 1) * sizeof(int32_t));
    size_t mask = s->table_cap - 1, slot = (size_t)h & mask;
    int32_t gi;
    while ((gi = s->table[slot]) >= 0) {
        group *g = &s->groups[gi];
        if (g->hash == h && g->rule == ri && memcmp(s->ikeys + g->key_off, key, n * sizeof(int32_t)) == 0) break;
        slot = (slot + 1) & mask;
    }
    group *g;
    size_t width = (size_t)rule->nbounds + 1;
    if (gi < 0) {
        if (!grow((void **)&s->groups, &s->groups_cap, s->ngroups, 1, sizeof(group))) return 0;
        if (!grow((void **)&s->ikeys, &s->ikeys_cap, s->ikeys_len, n + 1, sizeof(int32_t))) return 0;
        gi = (int32_t)s->ngroups++;
        g = &s->groups[gi];
        g->rule = ri;
        g->hash = h;
        g->key_off = s->ikeys_len;
        memcpy(s->ikeys + s->ikeys_len, key, n * sizeof(int32_t));
        s->ikeys_len += n;
        g->rows = 0;
        g->sum = 0.0;
        g->hist_off = g->cand_off = -1;
        g->next_in_rule = -1;
        if (rule->bounds) {
            if (!grow((void **)&s->hist, &s->hist_cap, s->hist_len, width, sizeof(int64_t))) return 0;
            g->hist_off = (int64_t)s->hist_len;
            memset(s->hist + s->hist_len, 0, width * sizeof(int64_t));
            s->hist_len += width;
            if (rule->candidates) {
                if (!grow((void **)&s->cands, &s->cands_cap, s->cands_len, width, sizeof(int32_t))) return 0;
                g->cand_off = (int64_t)s->cands_len;
                for (size_t b = 0; b < width; b++) s->cands[s->cands_len + b] = -1;
                s->cands_len += width;
            }
        }
        if (s->rule_last[ri] >= 0) s->groups[s->rule_last[ri]].next_in_rule = gi;
        else s->rule_first[ri] = gi;
        s->rule_last[ri] = gi;
        s->table[slot] = gi;
        if (s->ngroups * 2 > s->table_cap &&
            !rehash(&s->table, &s->table_cap, s->ngroups, s->groups, sizeof(group), offsetof(group, hash)))
            return 0;
    } else {
        g = &s->groups[gi];
    }
    g->rows++;
    if (rule->bounds) {
        /* le is inclusive: the first bound >= seconds (numpy searchsorted side="left") */
        Py_ssize_t lo = 0, hi = rule->nbounds;
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            if (rule->bounds[mid] < seconds) lo = mid + 1; else hi = mid;
        }
        s->hist[g->hist_off + lo]++;
        g->sum += seconds;
        if (g->cand_off >= 0 && s->cands[g->cand_off + lo] < 0) s->cands[g->cand_off + lo] = (int32_t)span_index;
    } else {
        g->sum += weight;
    }
    return 1;
}

/* The rules of a span name from resolve (Python: caller holds the GIL) into e->rules. id, -1 on error, -2 when
 * resolve said None (give up). */
static int32_t resolve_rules(scanner *s, name_entry *e, int32_t id, const uint8_t *p, size_t len) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)len);
    if (!key) return -1;
    PyObject *rules = PyObject_CallOneArg(s->resolve, key);
    Py_DECREF(key);
    if (!rules) return -1;
    if (rules == Py_None) { Py_DECREF(rules); return -2; }
    if (!PyTuple_Check(rules)) {
        Py_DECREF(rules);
        PyErr_SetString(PyExc_TypeError, "resolve must return a tuple of rule indexes or None");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(rules);
    e->rules = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!e->rules) { Py_DECREF(rules); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(rules, i));
        if (v == -1 && PyErr_Occurred()) { Py_DECREF(rules); return -1; }
        if (v < 0 || v >= s->nrules) {
            Py_DECREF(rules);
            PyErr_SetString(PyExc_ValueError, "rule index out of range");
            return -1;
        }
        e->rules[i] = (int32_t)v;
    }
    e->nrules = n;
    Py_DECREF(rules);
    return id;
}

/* Id of a span name in the per-call name table; on first sight its rules come from the names known across calls,
 * else from resolve (with the GIL), and are added to them. -1 on a Python error, -2 to give up. */
static int32_t name_id_for(scanner *s, const uint8_t *p, size_t len) {
    int is_new;
    int32_t id = intern(&s->names, p, len, &is_new);
    if (id < 0 || !is_new) return id;
    if (!grow((void **)&s->name_info, &s->name_info_cap, (size_t)id, 1, sizeof(name_entry))) return -1;
    name_entry *e = &s->name_info[id];
    e->p = p;
    e->len = len;
    e->nrules = 0;
    e->rules = NULL;
    e->needs_attrs = 0;
    uint64_t h = siphash13(&scan_key, p, len);
    int32_t out = id;
    int known = names_get(s->names_known, p, len, h, &e->rules, &e->nrules);
    if (known < 0) {
        WITH_GIL(PyErr_NoMemory());
        return -1;
    }
    if (!known) {
        WITH_GIL(out = resolve_rules(s, e, id, p, len));
        if (out < 0) return out;
        names_put(s->names_known, p, len, h, e->rules, e->nrules);
    }
    for (Py_ssize_t i = 0; i < e->nrules; i++) {
        if (e->rules[i] < 0 || e->rules[i] >= s->nrules) { /* names resolved for other rules */
            WITH_GIL(PyErr_SetString(PyExc_ValueError, "names hold a rule index out of range for these rules"));
            return -1;
        }
        e->needs_attrs |= s->rules[e->rules[i]].needs_attrs;
    }
    return out;
}

/* A wanted attribute (KeyValue bytes) into ids[]: the last one wins, as in the Python path. 1 ok, 0 Python
 * error, -1 give up. */
static inline int take_kv(scanner *s, const key_pattern *keys, Py_ssize_t nkeys, int32_t *ids, const uint8_t *p,
                          size_t len) {
    const uint8_t *key, *value;
    size_t key_len, value_len;
    if (!read_kv(p, len, &key, &key_len, &value, &value_len)) return -1;
    int k = find_key(keys, nkeys, key, key_len);
    if (k < 0) return 1;
    int is_new;
    int32_t id = intern(&s->values, value, value_len, &is_new);
    if (id < 0) return 0;
    ids[k] = id;
    return 1;
}

/* One span. 1 ok, 0 Python error, -1 give up. */
static HOT int scan_span(scanner *s, const uint8_t *p, size_t len) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r, ok;
    span_fields sp;
    memset(&sp, 0, sizeof(sp));
    sp.name = p;
    sp.tid = sp.sid = p;
    int32_t name_id = -1;   /* resolved as soon as the name is known (it usually precedes the attributes) */
    int name_seen = 0, attrs_deferred = 0, attrs_seen = 0;
    for (Py_ssize_t k = 0; k < s->nattr; k++) s->attr_ids[k] = -1;
    while ((r = wire_next(&c, &f)) == 1) {
        switch (f.number) {
        case 1: if (f.wtype != 2) return -1; sp.tid = f.data; sp.tid_len = f.len; break;
        case 2: if (f.wtype != 2) return -1; sp.sid = f.data; sp.sid_len = f.len; break;
        case 5:
            if (f.wtype != 2) return -1;
            if (name_seen) attrs_deferred |= attrs_seen; /* a second name: read the attributes again below */
            sp.name = f.data;
            sp.name_len = f.len;
            name_seen = 1;
            name_id = -1;
            break;
        case 6: if (f.wtype != 0) return -1; sp.kind = (int32_t)(uint32_t)f.value; break;
        case 7: if (f.wtype != 1) return -1; sp.start = f.value; break;
        case 8: if (f.wtype != 1) return -1; sp.end = f.value; break;
        case 9:
            if (f.wtype != 2) return -1;
            attrs_seen = 1;
            if (!name_seen) { attrs_deferred = 1; break; }
            if (name_id < 0) {
                name_id = name_id_for(s, sp.name, sp.name_len);
                if (name_id == -1) return 0;
                if (name_id == -2) return -1;
            }
            if (!s->name_info[name_id].needs_attrs) break;
            if ((ok = take_kv(s, s->attr_keys, s->nattr, s->attr_ids, f.data, f.len)) != 1) return ok;
            break;
        case 15: {
            if (f.wtype != 2) return -1;
            /* repeated occurrences merge: the last code on the wire wins, as in the parsed message */
            wire_cur sc = wire_span(f.data, f.len);
            wire_field sf;
            int sr;
            while ((sr = wire_next(&sc, &sf)) == 1)
                if (sf.number == 3) {
                    if (sf.wtype != 0) return -1;
                    sp.code = (int32_t)(uint32_t)sf.value;
                }
            if (sr < 0) return -1;
            break;
        }
        default: break;
        }
    }
    if (r < 0) return -1;
    if (name_id < 0) {
        name_id = name_id_for(s, sp.name, sp.name_len);
        if (name_id == -1) return 0;
        if (name_id == -2) return -1;
    }
    const name_entry *e = &s->name_info[name_id];
    if (attrs_deferred && e->needs_attrs) { /* attributes before the name on the wire: a second walk */
        for (Py_ssize_t k = 0; k < s->nattr; k++) s->attr_ids[k] = -1;
        c = wire_span(p, len);
        while ((r = wire_next(&c, &f)) == 1)
            if (f.number == 9 && (ok = take_kv(s, s->attr_keys, s->nattr, s->attr_ids, f.data, f.len)) != 1)
                return ok;
        if (r < 0) return -1;
    }
    uint64_t dur = sp.end >= sp.start ? sp.end - sp.start : 0;
    double dur_f = (double)dur;
    double seconds = dur_f * 1e-9;
    size_t index = s->nspans;
    if (index >= INT32_MAX) return -1;
    if (!grow((void **)&s->spans, &s->spans_cap, s->nspans * SPAN_RECORD, SPAN_RECORD, 1)) return 0;
    int64_t rec[4] = {(int64_t)(sp.tid - s->base), (int64_t)sp.tid_len, (int64_t)(sp.sid - s->base),
                      (int64_t)sp.sid_len};
    uint8_t *out = s->spans + s->nspans * SPAN_RECORD;
    memcpy(out, rec, 32);
    memcpy(out + 32, &sp.end, 8);
    memcpy(out + 40, &dur_f, 8);
    s->nspans++;
    for (Py_ssize_t i = 0; i < e->nrules; i++)
        if ((ok = add_row(s, e->rules[i], &sp, name_id, seconds, index)) != 1) return ok;
    return 1;
}

/* One ResourceSpans. 1 ok, 0 Python error, -1 give up. */
static int scan_resource_spans(scanner *s, const uint8_t *p, size_t len) {
    wire_cur c = wire_span(p, len);
    wire_field f;
    int r, ok;
    for (Py_ssize_t k = 0; k < s->nres; k++) s->res_ids[k] = -1;
    /* the resource first (it may come after the spans on the wire); repeated ones merge: last value wins */
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != 1) continue;
        if (f.wtype != 2) return -1;
        wire_cur rc = wire_span(f.data, f.len);
        wire_field rf;
        int rr;
        while ((rr = wire_next(&rc, &rf)) == 1) {
            if (rf.number != 1) continue;
            if (rf.wtype != 2) return -1;
            if ((ok = take_kv(s, s->res_keys, s->nres, s->res_ids, rf.data, rf.len)) != 1) return ok;
        }
        if (rr < 0) return -1;
    }
    if (r < 0) return -1;
    c = wire_span(p, len);
    while ((r = wire_next(&c, &f)) == 1) {
        if (f.number != 2) continue;
        if (f.wtype != 2) return -1;
        wire_cur sc = wire_span(f.data, f.len);
        wire_field sf;
        int sr;
        while ((sr = wire_next(&sc, &sf)) == 1) {
            if (sf.number != 2) continue;
            if (sf.wtype != 2) return -1;
            if ((ok = scan_span(s, sf.data, sf.len)) != 1) return ok;
        }
        if (sr < 0) return -1;
    }
    return r < 0 ? -1 : 1;
}

static int read_patterns(PyObject *tuple, key_pattern **out, Py_ssize_t *n) {
    if (!PyTuple_Check(tuple)) {
        PyErr_SetString(PyExc_TypeError, "expected a tuple of bytes");
        return 0;
    }
    *n = PyTuple_GET_SIZE(tuple);
    *out = PyMem_RawCalloc((size_t)(*n ? *n : 1), sizeof(key_pattern));
    if (!*out) { PyErr_NoMemory(); return 0; }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *b = PyTuple_GET_ITEM(tuple, i);
        if (!PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "expected a tuple of bytes");
            return 0;
        }
        (*out)[i].pattern = (const uint8_t *)PyBytes_AS_STRING(b);
        (*out)[i].len = (size_t)PyBytes_GET_SIZE(b);
    }
    return 1;
}

static int read_rules(scanner *s, PyObject *tuple) {
    if (!PyTuple_Check(tuple)) {
        PyErr_SetString(PyExc_TypeError, "rules must be a tuple");
        return 0;
    }
    s->nrules = PyTuple_GET_SIZE(tuple);
    s->rules = PyMem_RawCalloc((size_t)(s->nrules ? s->nrules : 1), sizeof(rule_spec));
    if (!s->rules) { PyErr_NoMemory(); return 0; }
    for (Py_ssize_t i = 0; i < s->nrules; i++) {
        PyObject *spec = PyTuple_GET_ITEM(tuple, i), *sources, *bounds;
        Py_ssize_t value_attr;
        int candidates;
        rule_spec *rule = &s->rules[i];
        if (!PyArg_ParseTuple(spec, "O!nOp", &PyTuple_Type, &sources, &value_attr, &bounds, &candidates)) return 0;
        rule->value_attr = value_attr;
        rule->candidates = candidates;
        if (value_attr >= s->nattr || value_attr < -1) {
            PyErr_SetString(PyExc_ValueError, "value_attr out of range");
            return 0;
        }
        rule->needs_attrs = value_attr >= 0;
        rule->nsources = PyTuple_GET_SIZE(sources);
        rule->sources = PyMem_RawCalloc((size_t)(rule->nsources ? rule->nsources : 1), sizeof(source));
        if (!rule->sources) { PyErr_NoMemory(); return 0; }
        for (Py_ssize_t j = 0; j < rule->nsources; j++) {
            int type;
            Py_ssize_t index;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(sources, j), "in", &type, &index)) return 0;
            Py_ssize_t limit = type == SRC_RESOURCE ? s->nres : (type == SRC_ATTR ? s->nattr : 1);
            if (type < 0 || type > SRC_ATTR || index < 0 || index >= limit) {
                PyErr_SetString(PyExc_ValueError, "label source out of range");
                return 0;
            }
            rule->sources[j].type = type;
            rule->sources[j].index = index;
            rule->needs_attrs |= type == SRC_ATTR;
        }
        if (bounds != Py_None) {
            if (!PyTuple_Check(bounds)) {
                PyErr_SetString(PyExc_TypeError, "bounds must be a tuple of floats or None");
                return 0;
            }
            rule->nbounds = PyTuple_GET_SIZE(bounds);
            rule->bounds = PyMem_RawMalloc((size_t)(rule->nbounds + 1) * sizeof(double));
            if (!rule->bounds) { PyErr_NoMemory(); return 0; }
            for (Py_ssize_t j = 0; j < rule->nbounds; j++) {
                rule->bounds[j] = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, j));
                if (rule->bounds[j] == -1.0 && PyErr_Occurred()) return 0;
            }
        }
    }
    return 1;
}

static void free_interner(interner *in) {
    PyMem_RawFree(in->items);
    PyMem_RawFree(in->table);
}

static void free_scanner(scanner *s) {
    PyMem_RawFree(s->attr_keys);
    PyMem_RawFree(s->res_keys);
    if (s->rules)
        for (Py_ssize_t i = 0; i < s->nrules; i++) {
            PyMem_RawFree(s->rules[i].sources);
            PyMem_RawFree(s->rules[i].bounds);
        }
    PyMem_RawFree(s->rules);
    PyMem_RawFree(s->groups);
    PyMem_RawFree(s->table);
    PyMem_RawFree(s->rule_first);
    PyMem_RawFree(s->rule_last);
    PyMem_RawFree(s->ikeys);
    PyMem_RawFree(s->hist);
    PyMem_RawFree(s->cands);
    PyMem_RawFree(s->spans);
    for (size_t i = 0; i < s->names.n && i < s->name_info_cap; i++) PyMem_RawFree(s->name_info[i].rules);
    PyMem_RawFree(s->name_info);
    free_interner(&s->names);
    free_interner(&s->values);
    PyMem_RawFree(s->scratch);
    PyMem_RawFree(s->attr_ids);
    PyMem_RawFree(s->res_ids);
    PyMem_RawFree(s->keybuf);
}

/* The length of the group's key bytes (see the top of this file). */
static size_t group_key_len(const scanner *s, const rule_spec *rule, const group *g) {
    const int32_t *ids = s->ikeys + g->key_off;
    size_t total = 0;
    for (Py_ssize_t i = 0; i < rule->nsources; i++) {
        int type = rule->sources[i].type;
        if (type == SRC_RESOURCE || type == SRC_ATTR) {
            total += ids[i] < 0 ? 1 : 1 + wire_varint_size(s->values.items[ids[i]].len) + s->values.items[ids[i]].len;
        } else if (type == SRC_NAME) {
            total += wire_varint_size(s->names.items[ids[i]].len) + s->names.items[ids[i]].len;
        } else {
            total += 4;
        }
    }
    return total;
}

/* Writes the group's key bytes, from its interned ids, to o (group_key_len bytes). */
static void group_key_write(const scanner *s, const rule_spec *rule, const group *g, uint8_t *o) {
    const int32_t *ids = s->ikeys + g->key_off;
    for (Py_ssize_t i = 0; i < rule->nsources; i++) {
        int type = rule->sources[i].type;
        const slice *v = NULL;
        if (type == SRC_RESOURCE || type == SRC_ATTR) {
            if (ids[i] < 0) { *o++ = 0; continue; }
            *o++ = 1;
            v = &s->values.items[ids[i]];
        } else if (type == SRC_NAME) {
            v = &s->names.items[ids[i]];
        }
        if (v) {
            o += wire_put_varint(o, v->len);
            memcpy(o, v->p, v->len);
            o += v->len;
        } else {
            uint32_t u = (uint32_t)ids[i];
            for (int b = 0; b < 4; b++) *o++ = (uint8_t)(u >> (8 * b));
        }
    }
}

/* A writable C-contiguous buffer of float64 ('d'), int64 ('q') or uint8 ('B') items (the aggregation's numpy
 * arrays), or an empty view for None. */
static int get_target(PyObject *obj, Py_buffer *view, char kind) {
    memset(view, 0, sizeof(*view));
    if (obj == Py_None) return 1;
    if (PyObject_GetBuffer(obj, view, PyBUF_CONTIG | PyBUF_FORMAT) < 0) return 0;
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    int ok = fmt[0] != '\0' && fmt[1] == '\0' && (kind == 'B' ? view->itemsize == 1 && fmt[0] == 'B' :
                                  view->itemsize == 8 && (kind == 'd' ? fmt[0] == 'd' : (fmt[0] == 'q' || fmt[0] == 'l')));
    if (!ok) {
        PyBuffer_Release(view);
        memset(view, 0, sizeof(*view));
        PyErr_SetString(PyExc_TypeError, "targets must be float64 / int64 / uint8 arrays");
        return 0;
    }
    return 1;
}

/* Applies a group whose key is known (`Slots`) straight into the target arrays. Returns the series slot (counters
 * and histograms), -2 for an applied position split, or -1 when Python must handle the group (a slot beyond the
 * arrays, which Python grows). */
static int64_t apply_known(const rule_spec *rule, const group *g, const int64_t *hist, const known_group *k,
                           Py_buffer *values, Py_buffer *counts, Py_buffer *sums) {
    size_t width = (size_t)rule->nbounds + 1;
    if (k->slot >= 0) {
        size_t slot = (size_t)k->slot;
        if (rule->bounds) {
            if (!counts->buf || !sums->buf || slot >= (size_t)sums->len / 8 || (slot + 1) * width > (size_t)counts->len / 8)
                return -1;
            int64_t *c = (int64_t *)counts->buf + slot * width;
            for (size_t b = 0; b < width; b++) c[b] += hist[b];
            ((double *)sums->buf)[slot] += g->sum;
        } else {
            if (!values->buf || slot >= (size_t)values->len / 8) return -1;
            ((double *)values->buf)[slot] += g->sum;
        }
        return k->slot;
    }
    if (rule->bounds || !values->buf) return -1;
    /* position split: every slot checked before anything is added */
    for (Py_ssize_t i = 0; i < k->npairs; i++)
        if ((size_t)k->pair_slots[i] >= (size_t)values->len / 8) return -1;
    for (Py_ssize_t i = 0; i < k->npairs; i++)
        ((double *)values->buf)[k->pair_slots[i]] += k->pair_weights[i] * (double)g->rows;
    return -2;
}

/* Exemplar candidates the walk found for one rule (the first span of each of its groups' buckets). */
static size_t rule_candidates(const scanner *s, Py_ssize_t ri) {
    size_t n = 0, width = (size_t)s->rules[ri].nbounds + 1;
    for (int32_t gi = s->rule_first[ri]; gi >= 0; gi = s->groups[gi].next_in_rule)
        if (s->groups[gi].cand_off >= 0)
            for (size_t b = 0; b < width; b++) n += s->cands[s->groups[gi].cand_off + b] >= 0;
    return n;
}

/* One rule's groups applied: those whose key `known` holds are added to the target arrays here. Returns None when
 * that was all of them and no exemplar candidate is to be offered (no Python object made per group), else
 * (slots, misses, rows, sums, hist, cands, skipped) over the rule's groups: `misses` lists (group index, key) of
 * the groups left to Python (their slots are -1); rows, sums and hist are None when there are none. Candidates
 * where the reservoir is full go to `skipped` only when `report_skipped` (else they are dropped here). */
static PyObject *rule_output(scanner *s, Py_ssize_t ri, PyObject *target, int report_skipped) {
    rule_spec *rule = &s->rules[ri];
    Slots *known;
    PyObject *values_obj, *counts_obj, *sums_obj, *full_obj;
    if (!PyArg_ParseTuple(target, "O!OOOO", &SlotsType, &known, &values_obj, &counts_obj, &sums_obj, &full_obj))
        return NULL;
    size_t n = 0, width = (size_t)rule->nbounds + 1, ncands = rule_candidates(s, ri);
    for (int32_t gi = s->rule_first[ri]; gi >= 0; gi = s->groups[gi].next_in_rule) n++;
    int offers = rule->candidates && rule->bounds;
    Py_buffer values, counts, sums, full;
    memset(&values, 0, sizeof(values));
    memset(&counts, 0, sizeof(counts));
    memset(&sums, 0, sizeof(sums));
    memset(&full, 0, sizeof(full));
    int64_t *slot_of = NULL, *cand_triples = NULL, *skip_triples = NULL;
    PyObject *slots = NULL, *misses = NULL, *rows = NULL, *sums_out = NULL, *hist = NULL, *cands = NULL;
    PyObject *skipped = NULL;
    PyObject *result = NULL;
    if (!get_target(values_obj, &values, 'd') || !get_target(counts_obj, &counts, 'q') ||
        !get_target(sums_obj, &sums, 'd') || !get_target(full_obj, &full, 'B'))
        goto out;
    slot_of = PyMem_RawMalloc((n ? n : 1) * sizeof(int64_t));
    cand_triples = PyMem_RawMalloc((ncands ? ncands : 1) * CAND_WORDS * sizeof(int64_t));
    skip_triples = PyMem_RawMalloc((ncands ? ncands : 1) * CAND_WORDS * sizeof(int64_t));
    if (!slot_of || !cand_triples || !skip_triples) {
        PyErr_NoMemory();
        goto out;
    }
    size_t i = 0, ci = 0, si_out = 0, nmiss = 0;
    for (int32_t gi = s->rule_first[ri]; gi >= 0; gi = s->groups[gi].next_in_rule, i++) {
        const group *g = &s->groups[gi];
        size_t klen = group_key_len(s, rule, g);
        if (!grow((void **)&s->keybuf, &s->keybuf_cap, 0, klen ? klen : 1, 1)) goto out;
        group_key_write(s, rule, g, s->keybuf);
        const int64_t *gh = rule->bounds ? s->hist + g->hist_off : NULL;
        const known_group *k = slots_find(known, s->keybuf, klen, siphash13(&scan_key, s->keybuf, klen));
        int64_t slot = k ? apply_known(rule, g, gh, k, &values, &counts, &sums) : -1;
        nmiss += slot == -1;
        slot_of[i] = slot;
        if (g->cand_off < 0 || !offers) continue;
        for (size_t b = 0; b < width; b++) {
            int32_t si = s->cands[g->cand_off + b];
            if (si < 0) continue;
            /* set apart where the reservoir already holds per_bucket candidates (it refuses them unless an
             * eviction frees room while this request's candidates are added) */
            int is_full = slot >= 0 && full.buf && ((size_t)slot + 1) * width <= (size_t)full.len &&
                          ((const uint8_t *)full.buf)[(size_t)slot * width + b];
            if (is_full && !report_skipped) continue;
            int64_t *t = is_full ? skip_triples + CAND_WORDS * si_out++ : cand_triples + CAND_WORDS * ci++;
            t[0] = (int64_t)i;
            t[1] = (int64_t)b;
            t[2] = (int64_t)si;
            memcpy(t + 3, s->spans + (size_t)si * SPAN_RECORD, SPAN_RECORD);
        }
    }
    if (!nmiss && !ci && !si_out) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    slots = PyBytes_FromStringAndSize((const char *)slot_of, (Py_ssize_t)(n * 8));
    misses = PyList_New(0);
    rows = nmiss ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 8)) : Py_NewRef(Py_None);
    sums_out = nmiss ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 8)) : Py_NewRef(Py_None);
    hist = nmiss && rule->bounds ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * width * 8)) : Py_NewRef(Py_None);
    cands = offers ? PyBytes_FromStringAndSize((const char *)cand_triples, (Py_ssize_t)(ci * CAND_BYTES))
                   : Py_NewRef(Py_None);
    skipped = offers && report_skipped
                  ? PyBytes_FromStringAndSize((const char *)skip_triples, (Py_ssize_t)(si_out * CAND_BYTES))
                  : Py_NewRef(Py_None);
    if (!slots || !misses || !rows || !sums_out || !hist || !cands || !skipped) goto out;
    i = 0;
    for (int32_t gi = s->rule_first[ri]; nmiss && gi >= 0; gi = s->groups[gi].next_in_rule, i++) {
        const group *g = &s->groups[gi];
        memcpy(PyBytes_AS_STRING(rows) + i * 8, &g->rows, 8);
        memcpy(PyBytes_AS_STRING(sums_out) + i * 8, &g->sum, 8);
        if (rule->bounds) memcpy(PyBytes_AS_STRING(hist) + i * width * 8, s->hist + g->hist_off, width * 8);
        if (slot_of[i] != -1) continue;
        PyObject *k = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)group_key_len(s, rule, g));
        if (!k) goto out;
        group_key_write(s, rule, g, (uint8_t *)PyBytes_AS_STRING(k));
        PyObject *miss = Py_BuildValue("(nN)", (Py_ssize_t)i, k);
        if (!miss || PyList_Append(misses, miss) < 0) { Py_XDECREF(miss); goto out; }
        Py_DECREF(miss);
    }
    result = PyTuple_Pack(7, slots, misses, rows, sums_out, hist, cands, skipped);
out:
    if (values.obj) PyBuffer_Release(&values);
    if (counts.obj) PyBuffer_Release(&counts);
    if (sums.obj) PyBuffer_Release(&sums);
    if (full.obj) PyBuffer_Release(&full);
    PyMem_RawFree(slot_of);
    PyMem_RawFree(cand_triples);
    PyMem_RawFree(skip_triples);
    Py_XDECREF(slots);
    Py_XDECREF(misses);
    Py_XDECREF(rows);
    Py_XDECREF(sums_out);
    Py_XDECREF(hist);
    Py_XDECREF(cands);
    Py_XDECREF(skipped);
    return result;
}

/* The walk (everything up to the targets): reads the request once, without the GIL. 1 walked, 0 Python error,
 * -1 bytes this scanner does not read. It touches nothing the targets hold, so it may run on any thread, before
 * the span-metrics stage's lock is taken (`walk`), and `scan` then only applies the groups. */
static int walk_setup(scanner *s, const Py_buffer *buf, PyObject *attr_obj, PyObject *res_obj, PyObject *rules_obj,
                      Names *names, PyObject *resolve) {
    memset(s, 0, sizeof(*s));
    s->names_known = names;
    s->resolve = resolve;
    s->base = buf->buf;
    if (!read_patterns(attr_obj, &s->attr_keys, &s->nattr) || !read_patterns(res_obj, &s->res_keys, &s->nres) ||
        !read_rules(s, rules_obj))
        return 0;
    size_t max_sources = 1;
    for (Py_ssize_t i = 0; i < s->nrules; i++)
        if ((size_t)s->rules[i].nsources > max_sources) max_sources = (size_t)s->rules[i].nsources;
    s->scratch = PyMem_RawMalloc((max_sources + 1) * sizeof(int32_t));
    s->attr_ids = PyMem_RawMalloc(((size_t)s->nattr + 1) * sizeof(int32_t));
    s->res_ids = PyMem_RawMalloc(((size_t)s->nres + 1) * sizeof(int32_t));
    s->rule_first = PyMem_RawMalloc(((size_t)s->nrules + 1) * sizeof(int32_t));
    s->rule_last = PyMem_RawMalloc(((size_t)s->nrules + 1) * sizeof(int32_t));
    s->table_cap = 256;
    s->table = PyMem_RawMalloc(s->table_cap * sizeof(int32_t));
    if (!s->scratch || !s->attr_ids || !s->res_ids || !s->rule_first || !s->rule_last || !s->table) {
        PyErr_NoMemory();
        return 0;
    }
    if (!interner_init(&s->names, 64) || !interner_init(&s->values, 256)) return 0;
    memset(s->rule_first, 0xFF, ((size_t)s->nrules + 1) * sizeof(int32_t));
    memset(s->rule_last, 0xFF, ((size_t)s->nrules + 1) * sizeof(int32_t));
    memset(s->table, 0xFF, s->table_cap * sizeof(int32_t));
    return 1;
}

/* The walk proper, without the GIL (walk_ts set: a step that needs Python takes it back). */
static int walk_spans(scanner *s, const Py_buffer *buf) {
    wire_cur c = wire_span(buf->buf, (size_t)buf->len);
    wire_field f;
    int r = 1;
    int status = 1;
    while (status == 1 && (r = wire_next(&c, &f)) == 1) {
        if (f.number != 1) continue;
        if (f.wtype != 2) { status = -1; break; }
        status = scan_resource_spans(s, f.data, f.len);
    }
    if (status == 1 && r < 0) status = -1;
    return status;
}

static int walk_request(scanner *s, const Py_buffer *buf, PyObject *attr_obj, PyObject *res_obj, PyObject *rules_obj,
                        Names *names, PyObject *resolve) {
    if (!walk_setup(s, buf, attr_obj, res_obj, rules_obj, names, resolve)) return 0;
    walk_ts = PyEval_SaveThread();
    int status = walk_spans(s, buf);
    PyEval_RestoreThread(walk_ts);
    walk_ts = NULL;
    return status;
}

/* A request walked ahead (`walk`), for one `scan` of the same bytes with the same keys and rules. */
typedef struct {
    PyObject_HEAD
    scanner s;
    Py_buffer buf;
    int has_buf;
    PyObject *attr_obj, *res_obj, *rules_obj; /* what the walk read (scan checks it is given the same objects) */
    PyObject *names_obj, *resolve_obj;         /* held while a job waits to run (the scanner borrows them) */
    int status;                                /* WALKED/NOT_READ, or not usable: TAKEN, PENDING, FAILED */
} Walked;

enum { WALKED = 1, NOT_READ = -1, TAKEN = 2, PENDING = 3, FAILED = 4 };

static void Walked_dealloc(Walked *w) {
    free_scanner(&w->s);
    if (w->has_buf) PyBuffer_Release(&w->buf);
    Py_XDECREF(w->attr_obj);
    Py_XDECREF(w->res_obj);
    Py_XDECREF(w->rules_obj);
    Py_XDECREF(w->names_obj);
    Py_XDECREF(w->resolve_obj);
    PyObject_Free(w);
}

/* What became of the walk: for tests and the fuzz target (pending, walked, not_read, failed, taken). */
static PyObject *Walked_state(Walked *w, void *closure) {
    switch (w->status) {
    case PENDING: return PyUnicode_FromString("pending");
    case WALKED: return PyUnicode_FromString("walked");
    case NOT_READ: return PyUnicode_FromString("not_read");
    case FAILED: return PyUnicode_FromString("failed");
    default: return PyUnicode_FromString("taken");
    }
}

static PyGetSetDef Walked_getset[] = {
    {"state", (getter)Walked_state, NULL, "pending, walked, not_read, failed or taken (by a scan)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WalkedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "processor.native._spanscan.Walked",
    .tp_basicsize = sizeof(Walked),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Walked_dealloc,
    .tp_doc = "A traces request walked ahead by walk(), for one scan() of the same bytes.",
    .tp_getset = Walked_getset,
};

/* A Walked holding the bytes and the scanner's inputs, not walked yet (status TAKEN until set up). */
static Walked *new_walked(PyObject *args, Names **names, PyObject **resolve) {
    PyObject *raw, *attr_obj, *res_obj, *rules_obj;
    if (!PyArg_ParseTuple(args, "O!OOOO!O", &PyBytes_Type, &raw, &attr_obj, &res_obj, &rules_obj, &NamesType,
                          names, resolve))
        return NULL;
    Walked *w = PyObject_New(Walked, &WalkedType);
    if (!w) return NULL;
    memset(&w->s, 0, sizeof(w->s));
    w->has_buf = 0;
    w->attr_obj = Py_NewRef(attr_obj);
    w->res_obj = Py_NewRef(res_obj);
    w->rules_obj = Py_NewRef(rules_obj);
    w->names_obj = w->resolve_obj = NULL;
    w->status = TAKEN;
    if (PyObject_GetBuffer(raw, &w->buf, PyBUF_SIMPLE) < 0) { Py_DECREF(w); return NULL; }
    w->has_buf = 1;
    return w;
}

/* walk(buf, attr_keys, res_keys, rules, names, resolve) -> Walked: scan's pass over the bytes, ahead. */
static PyObject *walk(PyObject *self, PyObject *args) {
    Names *names;
    PyObject *resolve;
    Walked *w = new_walked(args, &names, &resolve);
    if (!w) return NULL;
    int status = walk_request(&w->s, &w->buf, w->attr_obj, w->res_obj, w->rules_obj, names, resolve);
    if (status == 0) { Py_DECREF(w); return NULL; }
    w->status = status;
    return (PyObject *)w;
}

/* walk_job(same arguments as walk) -> Walked: set up here, walked by `_nogil.run_jobs` together with other
 * modules' jobs in one GIL release. A job that was not run, or failed, is not used by scan (it walks again). */
static PyObject *walk_job(PyObject *self, PyObject *args) {
    Names *names;
    PyObject *resolve;
    Walked *w = new_walked(args, &names, &resolve);
    if (!w) return NULL;
    if (!walk_setup(&w->s, &w->buf, w->attr_obj, w->res_obj, w->rules_obj, names, resolve)) {
        Py_DECREF(w);
        return NULL;
    }
    w->names_obj = Py_NewRef((PyObject *)names);
    w->resolve_obj = Py_NewRef(resolve);
    w->status = PENDING;
    return (PyObject *)w;
}

static int walked_run(PyObject *job, PyThreadState **ts) {
    Walked *w = (Walked *)job;
    if (w->status != PENDING) return -1;
    walk_ts = *ts;
    int status = walk_spans(&w->s, &w->buf);
    *ts = walk_ts;
    walk_ts = NULL;
    w->status = status == 0 ? FAILED : status;
    return status;
}

static void walked_after(PyObject *job) {}

static const nogil_job walked_job = {walked_run, walked_after};

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *attr_obj, *res_obj, *rules_obj, *resolve, *targets, *ahead = Py_None;
    Names *names;
    Py_ssize_t room = -1;
    if (!PyArg_ParseTuple(args, "y*OOOO!OO!|On", &buf, &attr_obj, &res_obj, &rules_obj, &NamesType, &names,
                          &resolve, &PyTuple_Type, &targets, &ahead, &room))
        return NULL;
    scanner s;
    PyObject *result = NULL, *outs = NULL;
    int status; /* 1 ok, 0 Python error, -1 give up */
    Walked *w = (Walked *)ahead;
    if (Py_IS_TYPE(ahead, &WalkedType) && (w->status == WALKED || w->status == NOT_READ) && w->has_buf && w->buf.buf == buf.buf &&
        w->buf.len == buf.len && w->attr_obj == attr_obj && w->res_obj == res_obj && w->rules_obj == rules_obj) {
        s = w->s; /* taken over: the walked object keeps the bytes alive, its scanner is emptied */
        memset(&w->s, 0, sizeof(w->s));
        status = w->status;
        w->status = TAKEN;
    } else {
        status = walk_request(&s, &buf, attr_obj, res_obj, rules_obj, names, resolve);
    }
    if (status == 0) goto out;
    if (status < 0) { result = Py_NewRef(Py_None); goto out; }
    if (PyTuple_GET_SIZE(targets) != s.nrules) {
        PyErr_SetString(PyExc_ValueError, "one target per rule");
        goto out;
    }
    /* Candidates where the reservoir is full matter only if this request's candidates could make it evict: more
     * of them than `room`, counted over every rule before any is reported. */
    size_t offerable = 0;
    for (Py_ssize_t ri = 0; ri < s.nrules; ri++) offerable += rule_candidates(&s, ri);
    int report_skipped = room < 0 || offerable > (size_t)room;
    if (!(outs = PyList_New(s.nrules))) goto out;
    for (Py_ssize_t i = 0; i < s.nrules; i++) {
        PyObject *o = rule_output(&s, i, PyTuple_GET_ITEM(targets, i), report_skipped);
        if (!o) goto out;
        PyList_SET_ITEM(outs, i, o);
    }
    result = Py_NewRef(outs);
out:
    Py_XDECREF(outs);
    free_scanner(&s);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Group a traces request's spans per derivation rule by their label sources."},
    {"walk", walk, METH_VARARGS, "scan's pass over a request, ahead and without the GIL (pass the result to scan)."},
    {"walk_job", walk_job, METH_VARARGS, "walk, set up to run later in _nogil.run_jobs (pass the result to scan)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spanscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__spanscan(void) {
    if (!hash_key_random(&scan_key) || PyType_Ready(&WalkedType) < 0 || PyType_Ready(&NamesType) < 0 ||
        PyType_Ready(&SlotsType) < 0 ||
        !nogil_job_register(&WalkedType, &walked_job))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Names", (PyObject *)&NamesType) < 0 ||
        PyModule_AddObjectRef(m, "Slots", (PyObject *)&SlotsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
