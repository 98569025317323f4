"""The native trace store (`processor/native/_tracestore.c`): the `store.TraceStore` that ships, and the packed
per-trace facts its batches are decided on.

Why: with spans already read in C, the sampler's remaining cost was Python per trace (entry objects, fact
merging, one `decide` call, cache and metric updates). Here buffered traces, their readiness and the decision
cache live in C; a batch of due traces comes back as one numpy record array (`Facts`), each policy answers for
the whole batch at once (`Policy.batch`, asked by `policyset.BatchDecider`), and only kept traces (a few
percent) and the rare traces a value-reading policy must look at (regex/numeric attributes, resource
attributes, rate_limit) are handled one by one in Python. The reference store (`reference_store.py`) stays the
fallback and the oracle (`tests/sampling/test_sampling_store.py` compares both).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from processor.native import load as load_native
from processor.native.readahead import MISSING, ReadAhead
from processor.sampling.buffer import Group, Groups, Late, TraceEntry, any_value, read_spans
from processor.sampling.emit import Outbox
from processor.sampling.policies.attribute import encoded_pair
from processor.sampling.policies.base import Policy
from processor.sampling.policies.batch import UNKNOWN_CLASS
from processor.sampling.policies.policyset import BatchDecider, Decision, DecisionSlots, PolicySet
from processor.sampling.store import Batch, Fault
from processor.sampling.trigger import DUE, FULL, RELIEVE, SHUTDOWN, Trigger

_store = load_native("tracestore")

# One trace's facts as packed by `_tracestore.c` (record_t, natural alignment).
RECORD = np.dtype({
    "names": ["tid", "first", "nbytes", "start", "end", "hits", "present", "classes", "nspans", "nlogs",
              "max_severity", "error", "exception", "has_res"],
    "formats": [("u1", 16), "f8", "i8", "u8", "u8", "u8", "u8", "u8", "i4", "i4", "i4", "u1", "u1", "u1"],
    "offsets": [0, 16, 24, 32, 40, 48, 56, 64, 72, 76, 80, 84, 85, 86],
    "itemsize": 88,
})
CLASSIFIER_MEMO = 1 << 16
_LOW56_SHIFTS = np.array([48, 40, 32, 24, 16, 8, 0], dtype=np.uint64)


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


class NativeStore:
    """The trace store in C: spans, logs, readiness and the decision cache live in `_tracestore`; Groups
    (resource/scope headers) stay here, interned once per ScopeSpans."""

    def __init__(self, policies: PolicySet, layout: Layout, max_spans: int, cache_size: int,
                 trigger: Trigger) -> None:
        assert _store is not None
        self.layout = layout
        self.trigger = trigger
        self.groups = Groups(policies.needs.resource_keys)
        self.native = _store.Store(tuple(name.encode() for name in layout.names), layout.store_keys, max_spans,
                                   cache_size)
        classify = layout.classifier()
        layout.classifies = classify is not None
        self.native.set_classifier(classify)
        self.slots = DecisionSlots(policies)
        self.decider = BatchDecider(policies, layout, self.slots)
        self.cache = NativeCache(self)
        self._ahead = ReadAhead()  # what `prepare` parsed of a request (used by one intake)

    # -- what is buffered ------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return self.native.stats()[1]

    @property
    def traces(self) -> TraceIds:
        return TraceIds(self.native.ids())

    def size(self) -> tuple[int, int]:
        traces, nbytes, _ = self.native.stats()
        return traces, nbytes

    def stats(self) -> tuple[int, int, int]:
        return self.native.stats()

    def snapshot(self) -> Iterator[tuple[bool, Group, bytes]]:
        by_id = self.groups.by_id
        for kind, gid, chunk in self.native.snapshot():
            yield bool(kind), by_id[gid], chunk

    # -- intake ---------------------------------------------------------------------------------------------

    def prepare(self, raw: bytes) -> None:
        """Intake's first pass (reading every span's facts) on this thread, ahead of `intake_spans` of the same
        bytes: called without the stage's lock, it runs without the GIL, so it overlaps other requests' work.
        A parse that raises is dropped: the intake parses again under the lock, and fails there as it would."""
        self._ahead.keep(raw, self.native.parse)

    def prepare_job(self, raw: bytes, now: float | None = None) -> object:
        """`prepare` as a job for `_nogil.run_jobs`, held for `intake_spans` of these bytes (a job that did not
        run is not used: the intake parses). With `now` the job also merges the request into the store, without
        the GIL and without the stage's lock, when every group it names holds chunks and none of its traces is being
        decided (`_tracestore` Parsed); intake then only reads its answer."""
        trigger = self.trigger
        job = self.native.parse_job(raw) if now is None else self.native.parse_job(
            raw, now, trigger.max_traces, trigger.max_bytes)
        self._ahead.hold(raw, job)
        return job

    def merged_plainly(self, raw: bytes, job: object) -> tuple[int, int, int] | None:
        done = self.native.complete_plain(job)  # the job checked the budgets when it merged
        if done is None:
            return None
        self._ahead.take(raw)  # answered: intake must not see this job
        return done

    def intake_spans(self, raw: bytes, now: float, late: Late) -> list[bytes]:
        """Buffer a serialized request; the ids of traces that reached max_spans come back."""
        full = self.add_span_bytes(raw, now, late)
        if full is None:  # bytes upb accepted but the store does not read (e.g. unknown field kinds)
            full = self._canonical_intake(raw, now, late)
        return full

    def _canonical_intake(self, raw: bytes, now: float, late: Late) -> list[bytes]:
        """A request the store did not read: its canonical encoding without unknown fields (what the reference
        store keeps of it too); refused as partial success if even that is not readable."""
        request = ExportTraceServiceRequest.FromString(raw)
        request.DiscardUnknownFields()
        full = self.add_span_bytes(request.SerializeToString(), now, late)
        if full is None:
            late.invalid_spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return []
        return full

    def _intern(self, res_field: bytes, scope_field: bytes) -> int:
        group = self.groups.intern_fields(res_field, scope_field)
        return group.gid * 2 + (1 if group.res_attrs else 0)

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
        parsed = self._ahead.take(raw)
        try:
            done = self.native.intake(raw, now, intern, None if parsed is MISSING else parsed)
        except BaseException:
            self.groups_gone(made)  # a refused request changes nothing: not even the groups it named
            raise
        if done is None:
            self.groups_gone(made)
            return None
        full, late_spans, late.dropped_spans, late.invalid_spans, unused, _added = done
        if late_spans:
            by_id = self.groups.by_id
            decision = self.slots.decision
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

    def intake_logs(self, request: Any, now: float, late: Late, passed: list[tuple[Group, bytes, int]]) -> int:
        """`TraceBuffer.add_logs` on the store (logs are rare next to spans: one call per record)."""
        add = self.native.add_log
        touched: list[Group] = []
        added = 0
        for group, trace_id, data, severity in self.groups.traced_log_records(request, passed, touched):
            code = add(trace_id, group.gid, data, severity, now)
            if code < 0:
                added += 1
                if group.res_attrs:
                    self.native.mark_resource(trace_id)
            elif code & 1:
                late.logs.append((group, data))
            else:
                late.dropped_logs += 1
        self.groups_gone([g.gid for g in touched if self.native.refcount(g.gid) <= 0])
        return added

    # -- decision rounds ------------------------------------------------------------------------------------

    def select_full(self, full: list[bytes]) -> Batch:
        return self._batch(self.native.select_ids(full), FULL)

    def select_due(self, now: float) -> Batch:
        return self._batch(self.native.select_due(now, self.trigger.root_grace, self.trigger.decision_wait), DUE)

    def select_relieve(self) -> Batch:
        max_bytes, max_traces = self.trigger.relieve_to()
        return self._batch(self.native.select_relieve(max_bytes, max_traces), RELIEVE)

    def select_all(self) -> Batch:
        return self._batch(self.native.select_all(), SHUTDOWN)

    @staticmethod
    def _batch(selected: tuple[bytes, bytes, bytes], reasons: tuple[str, ...]) -> Batch:
        raw, durs, why = selected
        recs = np.frombuffer(raw, dtype=RECORD)
        size = RECORD.itemsize
        return Batch(len(recs), recs["nlogs"], recs["first"], reasons, why if len(reasons) > 1 else None,
                     (raw, durs, recs), lambda: [raw[at:at + 16] for at in range(0, len(raw), size)],
                     find=lambda wanted: rows_with_ids(raw, recs, wanted))

    def decide(self, batch: Batch, now: float, fault: Fault) -> np.ndarray:
        """The policies over the batch's facts as arrays; a failure building the facts or deciding decides the
        whole batch `on_error` (a trace a value-reading policy fails on alone: `Facts.failed`)."""
        raw, durs, _ = batch.held
        step = "facts"
        try:
            facts = Facts(raw, durs, self.layout, self.native.batch_chunks, self.groups)
            step = "decide"
            return self.decider.decide(facts, now)
        except Exception as exc:  # never wedge the buffer: keep the batch (as the per-trace path does)
            fault(step, exc)
            return np.full(batch.n, self.slots.on_error, dtype=np.int32)

    def emit_kept(self, batch: Batch, rows: np.ndarray, slots: np.ndarray, out: Outbox) -> np.ndarray:
        """Kept traces are serialized by the store, joined per group (`_tracestore.Store.emit_kept`: the root
        gets its policy's mark; a trace kept by probability gets the threshold in every span's tracestate),
        without a Python object per trace or chunk. Returns the rest: traces without a root, or with a span
        that has a tracestate of its own (Python merges the thresholds)."""
        if not len(rows):
            return rows
        decisions = self.slots.decisions
        kept_slots = slots[rows].astype(np.int32)
        marks: list[bytes | None] = [None] * len(decisions)
        states: list[bytes | None] = [None] * len(decisions)
        for slot in np.unique(kept_slots).tolist():
            marks[slot] = out.mark(decisions[slot])
            states[slot] = out.threshold_state(decisions[slot])
        spans, logs, rest = self.native.emit_kept(rows.astype(np.int32).tobytes(), kept_slots.tobytes(),
                                                  tuple(marks), tuple(states))
        left = np.frombuffer(rest, dtype=np.int32)
        recs = batch.held[2]
        nspans = int(recs["nspans"][rows].sum() - recs["nspans"][left].sum())
        nlogs = int(recs["nlogs"][rows].sum() - recs["nlogs"][left].sum())
        out.add_serialized(spans, nspans, logs, nlogs, self.groups.by_id)
        return left

    def kept_entry(self, batch: Batch, row: int) -> TraceEntry:
        """A kept trace's bytes as a `TraceEntry` for the Outbox."""
        raw, _, recs = batch.held
        at = row * RECORD.itemsize
        chunks, log_chunks, root = self.native.batch_chunks(row)
        entry = TraceEntry(raw[at:at + 16], 0.0)
        entry.chunks = dict(chunks)
        entry.log_chunks = dict(log_chunks) if log_chunks else None
        entry.root = root
        entry.nspans = int(recs["nspans"][row])
        entry.nlogs = int(recs["nlogs"][row])
        return entry

    def finish(self, batch: Batch, slots: np.ndarray, kept: np.ndarray) -> None:
        batch.released = self.native.finish((slots * 2 + kept).astype(np.int32).tobytes())

    def release(self, batch: Batch) -> None:
        self.groups_gone(batch.released)

    def abort(self) -> None:
        self.native.abort()  # a no-op once finished


def rows_with_ids(raw: bytes, recs: np.ndarray, wanted: Collection[bytes]) -> list[tuple[int, bytes]]:
    """(row, trace id) of the batch records whose id is in `wanted`: the ids' first 8 bytes matched in numpy,
    then the whole id, so no bytes object is made per record."""
    keys = [tid[:8] for tid in wanted if len(tid) == 16]
    if not keys or not len(recs):
        return []
    lead = np.ascontiguousarray(recs["tid"][:, :8]).view("<u8").ravel()
    size = RECORD.itemsize
    found = []
    for row in np.flatnonzero(np.isin(lead, np.frombuffer(b"".join(keys), dtype="<u8"))).tolist():
        tid = raw[row * size:row * size + 16]
        if tid in wanted:
            found.append((row, tid))
    return found


class NativeCache:
    """`DecisionCache` over the store's cache (decisions are kept there as codes)."""

    def __init__(self, store: NativeStore) -> None:
        self.native = store.native
        self.slots = store.slots

    def get(self, trace_id: bytes) -> Decision | None:
        code = self.native.cache_get(trace_id)
        return None if code < 0 else self.slots.decision(code)

    def put(self, trace_id: bytes, decision: Decision) -> None:
        self.native.cache_put(trace_id, self.slots.code(decision))
