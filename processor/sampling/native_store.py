"""The native trace store (`processor/native/_tracestore.c`) behind the tail-sampling stage, and the batch
decider that evaluates policies as array operations over the store's packed per-trace facts.

Why: with spans already read in C, the sampler's remaining cost was Python per trace (entry objects, fact
merging, one `decide` call, cache and metric updates). Here buffered traces live in C; a batch of due traces
comes back as one numpy record array, each policy answers for the whole batch at once, and only kept traces
(a few percent) and the rare traces a value-reading policy must look at (regex/numeric attributes, resource
attributes, rate_limit) are handled one by one in Python, in batch order, with the same first-match rule as
`PolicySet.decide` (drops first). The pure-Python `TraceBuffer` stays the fallback and the reference
(`tests/sampling/test_sampling_store.py` compares both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from processor.native import load as load_native
from processor.sampling.buffer import Groups, Late, TraceEntry, any_value, read_spans
from processor.sampling.policies.attribute import encoded_pair
from processor.sampling.policies.base import Policy
from processor.sampling.policies.policyset import Decision, PolicySet

_store = load_native("tracestore")

# One trace's facts as packed by `_tracestore.c` (record_t, natural alignment).
RECORD = np.dtype({
    "names": ["tid", "first", "nbytes", "start", "end", "hits", "present", "classes", "nspans", "nlogs",
              "max_severity", "error", "exception", "has_res"],
    "formats": [("u1", 16), "f8", "i8", "u8", "u8", "u8", "u8", "u8", "i4", "i4", "i4", "u1", "u1", "u1"],
    "offsets": [0, 16, 24, 32, 40, 48, 56, 64, 72, 76, 80, 84, 85, 86],
    "itemsize": 88,
})
UNKNOWN_CLASS = 1 << 63  # a value the classifier could not answer for: ask the policies in Python
CLASSIFIER_MEMO = 1 << 16
_LOW56_SHIFTS = np.array([48, 40, 32, 24, 16, 8, 0], dtype=np.uint64)

Batch = Callable[["Facts", np.ndarray], np.ndarray]  # (facts, row indexes) -> bool per row


def available() -> bool:
    return _store is not None and _store.RECORD_SIZE == RECORD.itemsize


class Layout:
    """Which bit of a trace's `hits` / `present` words stands for what (the store numbers them the same way:
    keys in order, a gated key's gates in order)."""

    def __init__(self, policies: PolicySet) -> None:
        needs = policies.needs
        self.names = tuple(sorted(needs.span_names))
        self.hit_bit: dict[tuple[str, bytes], int] = {}
        self.present_bit: dict[str, int] = {}
        store_keys = []
        for key in sorted(needs.span_keys):
            gates = needs.span_key_gates.get(key)
            if gates is None:
                self.present_bit[key] = len(self.present_bit)
                store_keys.append((key.encode(), None))
            else:
                ordered = tuple(sorted(gates))
                for gate in ordered:
                    self.hit_bit[(key, gate)] = len(self.hit_bit)
                store_keys.append((key.encode(), ordered))
        self.store_keys = tuple(store_keys)
        # The span attribute keys a trace looked at in Python is read for (`Facts.attrs`, as TraceBuffer.complete).
        self.value_keys = frozenset(needs.span_keys)

        # Value-reading attribute policies (regex, numeric) on span attributes: one "class" bit each, set on a
        # trace when one of its spans has a value the policy accepts (see `classifier`).
        self.class_bit: dict[int, int] = {}
        self.classifies = False  # set once the store takes the classifier
        self._tests: dict[str, list[tuple[Callable[[Any], bool], int]]] = {}
        for policy in _attribute_policies(policies.policies):
            if policy.scope not in ("any", "span") or self.gated(policy):
                continue
            bit = self.class_bit[id(policy)] = len(self.class_bit)
            for key in policy.keys:
                self._tests.setdefault(key, []).append((policy.test, bit))
        self._key_tests = [self._tests.get(key.decode(), []) for key, _ in self.store_keys]

    def gated(self, policy: Any) -> bool:
        """True when exact-value hit bits answer this attribute policy on span attributes."""
        return policy.exact is not None and all(
            (key, encoded_pair(key, value)) in self.hit_bit for key in policy.keys for value in policy.exact)

    def fits(self) -> bool:
        return len(self.hit_bit) <= 64 and len(self.present_bit) <= 64

    def classifier(self) -> Callable[[int, bytes], int] | None:
        """classify(key index, serialized KeyValue) -> class bits, memoised by the KeyValue's bytes: values of
        read-all keys repeat (routes, placements), so each distinct one meets the policies' tests once."""
        if not self.class_bit or len(self.class_bit) >= 63:
            return None
        key_tests = self._key_tests
        memo: dict[tuple[int, bytes], int] = {}

        def classify(index: int, kv: bytes) -> int:
            bits = memo.get((index, kv))
            if bits is None:
                if len(memo) >= CLASSIFIER_MEMO:
                    memo.clear()
                value = any_value(KeyValue.FromString(kv).value)
                bits = 0
                for test, bit in key_tests[index]:
                    try:
                        if test(value):
                            bits |= 1 << bit
                    except Exception:  # noqa: BLE001 - the policy itself decides such a trace, in Python
                        bits |= UNKNOWN_CLASS
                memo[(index, kv)] = bits
            return bits
        return classify


def _attribute_policies(policies: list[Policy]) -> Iterator[Any]:
    """Every attribute policy, also inside drop / not / and."""
    for policy in policies:
        if policy.kind == "attribute":
            yield policy
        parts = [getattr(policy, "part", None), *getattr(policy, "parts", ())]
        yield from _attribute_policies([part for part in parts if part is not None])


class View:
    """One trace of a batch as a `TraceView`, for the policies evaluated in Python (values read on demand)."""

    def __init__(self, facts: Facts, row: int) -> None:
        rec = facts.recs[row]
        self.trace_id = facts.tid(row)
        self.nspans = int(rec["nspans"])
        self.error = bool(rec["error"])
        self.exception = bool(rec["exception"])
        self.max_severity = int(rec["max_severity"])
        self.start = int(rec["start"]) if rec["nspans"] else 1 << 64
        self.end = int(rec["end"])
        durs = facts.durs[row]
        self.durations = {name: int(took) for name, took in zip(facts.layout.names, durs, strict=True)
                          if took >= 0} or None
        self.span_attrs, self.res_attrs = facts.attrs(row)


class Facts:
    """A batch of due traces: the packed records as numpy columns plus lazy per-row views."""

    def __init__(self, raw: bytes, durs: bytes, layout: Layout, chunks: Callable[[int], Any],
                 groups: Groups) -> None:
        self.raw = raw
        self.recs = np.frombuffer(raw, dtype=RECORD)
        self.n = len(self.recs)
        nnames = len(layout.names)
        self.durs = np.frombuffer(durs, dtype=np.int64).reshape(self.n, nnames)
        self.layout = layout
        self.chunks = chunks
        self.groups = groups
        self.error = self.recs["error"].astype(bool)
        self.exception = self.recs["exception"].astype(bool)
        self.has_res = self.recs["has_res"].astype(bool)
        self._views: dict[int, View] = {}
        self._low56: np.ndarray | None = None
        self.failed: set[int] = set()

    def tid(self, row: int) -> bytes:
        at = row * RECORD.itemsize
        return self.raw[at:at + 16]

    def low56(self) -> np.ndarray:
        if self._low56 is None:
            tail = self.recs["tid"][:, 9:16].astype(np.uint64)
            self._low56 = np.bitwise_or.reduce(tail << _LOW56_SHIFTS, axis=1)
        return self._low56

    def view(self, row: int) -> View:
        view = self._views.get(row)
        if view is None:
            view = self._views[row] = View(self, row)
        return view

    def attrs(self, row: int) -> tuple[dict[str, list[Any]] | None, dict[str, list[Any]] | None]:
        """Span attribute values (parsed from the trace's chunks, as `TraceBuffer.complete` reads them) and the
        resource attribute values of the trace's groups."""
        chunks, log_chunks, _ = self.chunks(row)
        by_id = self.groups.by_id
        span_attrs: dict[str, list[Any]] | None = None
        res_attrs: dict[str, list[Any]] | None = None
        for gid, _chunk in [*chunks, *(log_chunks or ())]:
            group = by_id[gid]
            if group.res_attrs:
                res_attrs = res_attrs or {}
                for key, values in group.res_attrs.items():
                    res_attrs.setdefault(key, []).extend(values)
        if chunks and self.layout.value_keys:
            _, span_attrs, _ = read_spans((chunk for _gid, chunk in chunks), frozenset(), self.layout.value_keys,
                                          False)
        return span_attrs, res_attrs


def _in_python(policy: Policy, now: float) -> Batch:
    """A policy that needs values or state: asked per trace, in batch order (rate_limit's tokens then go
    exactly as with sequential decisions). A failing trace is marked and decided `on_error`."""
    def run(facts: Facts, rows: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows), dtype=bool)
        for i, row in enumerate(rows.tolist()):
            if row in facts.failed:
                out[i] = True  # decided on_error by the caller
                continue
            try:
                out[i] = policy.matches(facts.view(row), now)
            except Exception:  # noqa: BLE001 - same rule as the per-trace path: keep the trace
                facts.failed.add(row)
                out[i] = True
        return out
    return run


def _some_in_python(policy: Policy, now: float, ask: Callable[[Facts, np.ndarray], np.ndarray],
                    fast: Batch | None) -> Batch:
    """Rows where `ask` is true go to the policy in Python; the others take `fast` (or False)."""
    slow = _in_python(policy, now)

    def run(facts: Facts, rows: np.ndarray) -> np.ndarray:
        out = fast(facts, rows) if fast is not None else np.zeros(len(rows), dtype=bool)
        need = ask(facts, rows)
        if need.any():
            out[need] = slow(facts, rows[need])
        return out
    return run


def compile_policy(policy: Policy, layout: Layout, now: float) -> Batch:
    kind = policy.kind
    p: Any = policy
    if kind == "always":
        return lambda f, rows: np.ones(len(rows), dtype=bool)
    if kind == "status_code":
        if p.exception_events:
            return lambda f, rows: f.error[rows] | f.exception[rows]
        return lambda f, rows: f.error[rows].copy()
    if kind == "log_severity":
        return lambda f, rows: f.recs["max_severity"][rows] >= p.minimum
    if kind == "span_count":
        if p.maximum is None:
            return lambda f, rows: f.recs["nspans"][rows] >= p.minimum
        return lambda f, rows: (f.recs["nspans"][rows] >= p.minimum) & (f.recs["nspans"][rows] <= p.maximum)
    if kind == "latency":
        threshold = p.threshold_ns
        if threshold < 0:
            return _in_python(policy, now)
        if p.span_name is None:
            def trace_latency(f: Facts, rows: np.ndarray) -> np.ndarray:
                start, end = f.recs["start"][rows], f.recs["end"][rows]
                return (end >= start) & ((end - start) > np.uint64(threshold))
            return trace_latency
        col = layout.names.index(p.span_name)
        return lambda f, rows: f.durs[rows, col] > threshold
    if kind == "probabilistic":
        threshold = p.threshold
        return lambda f, rows: f.low56()[rows] >= np.uint64(threshold)
    if kind == "drop":
        return compile_policy(p.part, layout, now)
    if kind == "not":
        inner = compile_policy(p.part, layout, now)
        return lambda f, rows: ~inner(f, rows)
    if kind == "and":
        parts = [compile_policy(part, layout, now) for part in p.parts]

        def all_of(f: Facts, rows: np.ndarray) -> np.ndarray:
            out = np.ones(len(rows), dtype=bool)
            for part in parts:  # later parts only see rows still matching (as `all` short-circuits)
                live = np.flatnonzero(out)
                if not len(live):
                    break
                out[live] = part(f, rows[live])
            return out
        return all_of
    if kind == "attribute":
        return _attribute(p, layout, now)
    return _in_python(policy, now)


def _attribute(p: Any, layout: Layout, now: float) -> Batch:
    span_side = p.scope in ("any", "span")
    res_side = p.scope in ("any", "resource")
    fast: Batch | None = None
    present = 0
    unknown = False
    if span_side:
        bits = [layout.hit_bit.get((key, encoded_pair(key, v))) for key in p.keys for v in (p.exact or ())]
        class_bit = layout.class_bit.get(id(p)) if layout.classifies else None
        if p.exact is not None and all(bit is not None for bit in bits):
            mask = np.uint64(sum(1 << bit for bit in bits if bit is not None))
            fast = lambda f, rows: (f.recs["hits"][rows] & mask) != 0  # noqa: E731
        elif class_bit is not None:
            cmask = np.uint64(1 << class_bit)
            fast = lambda f, rows: (f.recs["classes"][rows] & cmask) != 0  # noqa: E731
            unknown = True
        else:
            for key in p.keys:
                bit = layout.present_bit.get(key)
                if bit is not None:
                    present |= 1 << bit
    pmask = np.uint64(present)

    def ask(f: Facts, rows: np.ndarray) -> np.ndarray:
        need = (f.recs["present"][rows] & pmask) != 0 if present else np.zeros(len(rows), dtype=bool)
        if unknown:
            need |= (f.recs["classes"][rows] & np.uint64(UNKNOWN_CLASS)) != 0
        if res_side:
            need |= f.has_res[rows]
        return need
    return _some_in_python(p, now, ask, fast)


class BatchDecider:
    """`PolicySet.decide` for a whole batch: decision slots into `decisions` (code = slot * 2 + kept)."""

    def __init__(self, policies: PolicySet, layout: Layout) -> None:
        self.policies = policies
        self.layout = layout
        self.decisions: list[Decision] = []
        self._slot: dict[int, int] = {}
        self.drop_slots = [self.slot(policies._drop[p.name]) for p in policies.drops]
        self.keep_slots = [self.slot(policies._keep[p.name]) for p in policies.keeps]
        self.no_match = self.slot(policies.no_match)
        self.on_error = self.slot(policies.on_error)

    def slot(self, decision: Decision) -> int:
        slot = self._slot.get(id(decision))
        if slot is None:
            slot = self._slot[id(decision)] = len(self.decisions)
            self.decisions.append(decision)
        return slot

    def code(self, decision: Decision) -> int:
        return self.slot(decision) * 2 + int(decision.kept)

    def decision(self, code: int) -> Decision:
        return self.decisions[code >> 1]

    def kept_array(self) -> np.ndarray:
        return np.array([d.kept for d in self.decisions], dtype=bool)

    def decide(self, facts: Facts, now: float) -> np.ndarray:
        slots = np.full(facts.n, -1, dtype=np.int32)
        ordered = [*zip(self.policies.drops, self.drop_slots, strict=True),
                   *zip(self.policies.keeps, self.keep_slots, strict=True)]
        for policy, slot in ordered:
            rows = np.flatnonzero(slots < 0)
            if not len(rows):
                break
            matched = compile_policy(policy, self.layout, now)(facts, rows)
            slots[rows[matched]] = slot
        slots[slots < 0] = self.no_match
        for row in facts.failed:
            slots[row] = self.on_error
        return slots


class TraceIds(Mapping[bytes, None]):
    """`buffer.traces` for code and tests that only look at which traces are buffered."""

    def __init__(self, ids: list[bytes]) -> None:
        self._ids = dict.fromkeys(ids)

    def __getitem__(self, key: bytes) -> None:
        return self._ids[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class NativeBuffer:
    """The stage's buffer when the native store is built: spans, logs, readiness and the decision cache in C;
    Groups (resource/scope headers) stay here, interned once per ScopeSpans."""

    def __init__(self, policies: PolicySet, layout: Layout, max_spans: int, cache_size: int) -> None:
        assert _store is not None
        self.layout = layout
        self.groups = Groups(policies.needs.resource_keys)
        self.store = _store.Store(tuple(name.encode() for name in layout.names), layout.store_keys, max_spans,
                                  cache_size)
        classify = layout.classifier()
        layout.classifies = classify is not None
        self.store.set_classifier(classify)
        self.decider = BatchDecider(policies, layout)

    def _intern(self, res_field: bytes, scope_field: bytes) -> int:
        group = self.groups.intern_fields(res_field, scope_field)
        return group.gid * 2 + (1 if group.res_attrs else 0)

    @property
    def nbytes(self) -> int:
        return self.store.stats()[1]

    @property
    def traces(self) -> TraceIds:
        return TraceIds(self.store.ids())

    def __len__(self) -> int:
        return self.store.stats()[0]

    def nspans(self) -> int:
        return self.store.stats()[2]

    def add_span_bytes(self, raw: bytes, now: float, late: Late) -> list[bytes] | None:
        """Buffer a serialized request; the ids of traces that reached max_spans come back (None: bytes the
        store does not understand, nothing was buffered)."""
        made: list[int] = []
        known = self.groups._next

        def intern(res_field: bytes, scope_field: bytes) -> int:
            code = self._intern(res_field, scope_field)
            if code >> 1 >= known:
                made.append(code >> 1)
            return code
        try:
            done = self.store.intake(raw, now, intern)
        except BaseException:
            self.groups_gone(made)  # a refused request changes nothing: not even the groups it named
            raise
        if done is None:
            self.groups_gone(made)
            return None
        full, late_spans, late.dropped_spans, late.invalid_spans, unused, _added = done
        if late_spans:
            by_id = self.groups.by_id
            decision = self.decider.decision
            late.spans.extend((by_id[gid], data, is_root, decision(code)) for gid, data, is_root, code in late_spans)
        if unused:
            self.groups_gone(unused)
        return full

    def groups_gone(self, gids: list[int]) -> None:
        by_id, by_key = self.groups.by_id, self.groups.by_key
        for gid in gids:
            group = by_id.pop(gid, None)
            if group is not None:
                del by_key[(group.resource_field, group.scope_field)]

    def add_logs(self, request: Any, now: float, cache: Any, late: Late,
                 passed: list[tuple[Any, bytes, int]]) -> int:
        """`TraceBuffer.add_logs` on the store (logs are rare next to spans: one call per record)."""
        add = self.store.add_log
        touched: list[Any] = []
        added = 0
        for group, trace_id, data, severity in self.groups.traced_log_records(request, passed, touched):
            code = add(trace_id, group.gid, data, severity, now)
            if code < 0:
                added += 1
                if group.res_attrs:
                    self.store.mark_resource(trace_id)
            elif code & 1:
                late.logs.append((group, data))
            else:
                late.dropped_logs += 1
        self.groups_gone([g.gid for g in touched if self.store.refcount(g.gid) <= 0])
        return added

    def entry(self, row: int, trace_id: bytes, nspans: int, nlogs: int) -> TraceEntry:
        """A kept trace's bytes as a `TraceEntry` for the Outbox."""
        chunks, log_chunks, root = self.store.batch_chunks(row)
        entry = TraceEntry(trace_id, 0.0)
        entry.chunks = dict(chunks)
        entry.log_chunks = dict(log_chunks) if log_chunks else None
        entry.root = root
        entry.nspans = nspans
        entry.nlogs = nlogs
        return entry


class NativeCache:
    """`DecisionCache` over the store's cache (decisions are kept there as codes)."""

    def __init__(self, buffer: NativeBuffer) -> None:
        self.store = buffer.store
        self.decider = buffer.decider

    def get(self, trace_id: bytes) -> Decision | None:
        code = self.store.cache_get(trace_id)
        return None if code < 0 else self.decider.decision(code)

    def put(self, trace_id: bytes, decision: Decision) -> None:
        self.store.cache_put(trace_id, self.decider.code(decision))
