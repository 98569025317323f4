"""The native span intake (`processor/native/_spanscan.c`): the same derived metrics as `Deriver.consume`,
with Python working per group of spans instead of per span.

The scanner groups each rule's spans by the raw bytes of the rule's label sources (resource and span
attribute values as serialized AnyValues, span name, kind, status code). Here each distinct group key is
turned into a series slot once, with the same label logic as the compiled plans (`plan.py`), and cached; the
group totals (span counts, weights, duration buckets) are then added with numpy. Exemplar candidates come as
the first span of each (group, bucket), so no per-span Python object is ever made.
"""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import numpy as np
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from processor.native.readahead import MISSING, ReadAhead
from processor.spanmetrics.aggregate import CounterAgg, Exemplar, HistogramAgg
from processor.spanmetrics.exemplars import Candidate, ExemplarReservoir
from processor.spanmetrics.plan import (
    KIND_NAMES,
    STATUS_NAMES,
    RuleSink,
    any_number,
    any_text,
    kind_name,
    status_name,
)
from processor.spanmetrics.rules import LabelSpec

SRC_RESOURCE, SRC_NAME, SRC_KIND, SRC_STATUS, SRC_ATTR = range(5)
GROUP_CACHE_MAX = 20_000  # per rule: distinct raw label combinations remembered (a flood is not cached)
NAME_CACHE_MAX = 10_000  # like Deriver.plans: span names are low-cardinality, a flood of names is not cached
# One exemplar candidate as scan reports it: group index, bucket, span index, trace id offset and length, span id
# offset and length (into the request), end time, duration in ns
CANDIDATE = struct.Struct("<qqqqqqqQd")

Source = tuple[int, int]


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = raw[at]
        at += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, at
        shift += 7


def split_key(raw: bytes, sources: list[Source]) -> list[Any]:
    """A group key back into its parts: AnyValue | None (absent) for attributes, str for the name, int for
    kind and status code (the scanner's encoding, see `_spanscan.c`)."""
    parts: list[Any] = []
    at = 0
    for kind, _ in sources:
        if kind in (SRC_RESOURCE, SRC_ATTR):
            present = raw[at]
            at += 1
            if not present:
                parts.append(None)
                continue
            n, at = _varint(raw, at)
            parts.append(AnyValue.FromString(raw[at:at + n]))
            at += n
        elif kind == SRC_NAME:
            n, at = _varint(raw, at)
            parts.append(raw[at:at + n].decode())
            at += n
        else:
            parts.append(int.from_bytes(raw[at:at + 4], "little", signed=True))
            at += 4
    return parts


class _NativeRule:
    """One rule as the scanner sees it, and the cache from raw group keys to series slots (or split pairs)."""

    def __init__(self, module: ModuleType, sources: list[Source], value_attr: int, agg: CounterAgg | HistogramAgg,
                 sink: RuleSink | None, candidates: bool) -> None:
        self.sources = sources
        self.value_attr = value_attr
        self.agg = agg
        self.sink = sink  # None for RED
        self.candidates = candidates
        # group key -> series slot, or ((slot, weight), ...) for a position split; in C, so the scanner looks
        # known keys up without a bytes object per group (up to GROUP_CACHE_MAX keys: a flood is not cached)
        self.cache = module.Slots(GROUP_CACHE_MAX)
        bounds = tuple(agg.bounds) if isinstance(agg, HistogramAgg) else None
        self.spec = (tuple(sources), value_attr, bounds, candidates)

    def target(self, reservoir: ExemplarReservoir | None) -> tuple:
        """Where the scanner adds groups whose key is cached (the arrays are replaced when they grow)."""
        agg = self.agg
        if isinstance(agg, HistogramAgg):
            full = reservoir.full_mask(agg) if self.candidates and reservoir is not None else None
            return (self.cache, None, agg.counts, agg.sums, full)
        return (self.cache, agg.values, None, None, None)


class NativeIntake:
    """`Deriver.consume` for serialized requests, through `_spanscan.scan`; shares the Deriver's aggregations,
    series indexes and exemplar reservoir, so either path may take any request."""

    def __init__(self, module: ModuleType, red: HistogramAgg | None, sinks: list[RuleSink],
                 resource_keys: list[str], reservoir: ExemplarReservoir | None) -> None:
        self.module = module
        self.reservoir = reservoir
        attr_keys = sorted({k for s in sinks for k in s.rule.attribute_keys()})
        self.attr_pos = {k: i for i, k in enumerate(attr_keys)}
        self.res_pos = {k: i for i, k in enumerate(resource_keys)}
        self.attr_keys = tuple(k.encode() for k in attr_keys)
        self.res_keys = tuple(k.encode() for k in resource_keys)
        self.rules: list[_NativeRule] = []
        self.red_index = -1
        if red is not None:
            self.red_index = 0
            self.rules.append(_NativeRule(module, [(SRC_RESOURCE, self.res_pos["service.name"]), (SRC_NAME, 0),
                                           (SRC_KIND, 0), (SRC_STATUS, 0)], -1, red, None, reservoir is not None))
        self.sink_base = len(self.rules)
        self.sinks = sinks
        for sink in sinks:
            rule = sink.rule
            sources = [self._source(spec) for spec in rule.labels]
            if rule.kind == "position_split":
                sources.append((SRC_ATTR, self.attr_pos[rule.count_attribute]))  # type: ignore[index]
            value_attr = self.attr_pos[rule.value_attribute] if rule.value_attribute else -1
            self.rules.append(_NativeRule(module, sources, value_attr, sink.agg, sink,
                                          reservoir is not None and isinstance(sink.agg, HistogramAgg)))
        self.specs = tuple(r.spec for r in self.rules)
        # Span name -> rule indexes, in C: walks on any thread read it without the GIL (`_resolve` fills it).
        self.names = module.Names(NAME_CACHE_MAX)
        self._ahead = ReadAhead()  # the scanner's walk of a request `walk` read (used by one `consume`)

    def _source(self, spec: LabelSpec) -> Source:
        if spec.source == "attribute":
            return (SRC_ATTR, self.attr_pos[spec.key])
        if spec.source == "resource":
            return (SRC_RESOURCE, self.res_pos[spec.key])
        return ({"name": SRC_NAME, "kind": SRC_KIND}.get(spec.key, SRC_STATUS), 0)

    def _resolve(self, raw_name: bytes) -> tuple[int, ...] | None:
        """Rule indexes for a span name (called by the scanner for a name `names` does not hold; it remembers
        the answer, up to NAME_CACHE_MAX names)."""
        try:
            name = raw_name.decode()
        except UnicodeDecodeError:
            return None  # not valid OTLP: the Python path reports it
        rules = ((self.red_index,) if self.red_index >= 0 else ()) + tuple(
            self.sink_base + i for i, s in enumerate(self.sinks) if s.rule.matches(name))
        return rules

    def walk(self, raw: bytes) -> None:
        """The scanner's pass over `raw`, on this thread, ahead of its `consume`. Called without the stage's
        lock: the walk runs without the GIL and touches nothing `consume` changes (the span-name cache it may add
        to only grows). A walk that raises is dropped: `consume` walks again and reports it."""
        self._ahead.keep(raw, lambda data: self.module.walk(data, self.attr_keys, self.res_keys, self.specs,
                                                            self.names, self._resolve))

    def walk_job(self, raw: bytes) -> object:
        """`walk` as a job for `_nogil.run_jobs`, held for `consume` of these bytes (a job that did not run is
        not used: `consume` walks)."""
        job = self.module.walk_job(raw, self.attr_keys, self.res_keys, self.specs, self.names, self._resolve)
        self._ahead.hold(raw, job)
        return job

    def consume(self, raw: bytes) -> bool:
        """Adds one serialized request; False when the scanner gave up (the caller then takes the Python path).
        Groups whose key is cached are added by the scanner itself; here only new keys and exemplars."""
        reservoir = self.reservoir
        targets = tuple(r.target(reservoir) for r in self.rules)
        walked = self._ahead.take(raw)
        room = -1 if reservoir is None else max(0, reservoir.max_traces - len(reservoir.pending))
        outs = self.module.scan(raw, self.attr_keys, self.res_keys, self.specs, self.names, self._resolve,
                                targets, None if walked is MISSING else walked, room)
        if outs is None:
            return False
        offers: list[tuple[HistogramAgg, np.ndarray, bytes, bytes]] = []
        offered = 0
        for rule, out in zip(self.rules, outs, strict=True):
            if out is None:
                continue  # the scanner added every group (the usual case once the keys are known)
            slots_raw, misses, rows, sums, hist, cands, skipped = out
            if not (misses or cands or skipped):
                continue
            slots = np.frombuffer(slots_raw, dtype=np.int64)
            if misses:
                slots = slots.copy()
                self._misses(rule, misses, slots, rows, sums, hist)
            if cands or skipped:
                offers.append((rule.agg, slots, cands, skipped or b""))  # type: ignore[arg-type]
                offered += len(cands) // CANDIDATE.size
        if offered or (offers and self._eviction_possible(offered)):
            # Candidates the scanner set apart sit where the reservoir is full: they matter only if adding
            # this request's candidates evicts an old trace (which frees room), as the Python path would see.
            everything = self._eviction_possible(offered)
            for agg, slots, cands, skipped in offers:
                chosen = cands + skipped if everything else cands
                if chosen:
                    self._candidates(agg, slots, chosen, raw)
        return True

    def _eviction_possible(self, offered: int) -> bool:
        reservoir = self.reservoir
        assert reservoir is not None
        return len(reservoir.pending) + offered > reservoir.max_traces

    def _misses(self, rule: _NativeRule, misses: list[tuple[int, bytes]], slots: np.ndarray, rows: bytes,
                sums: bytes, hist: bytes | None) -> None:
        """Groups the scanner could not add (key not cached yet, or an overflow series): resolved and added."""
        at = np.fromiter((g for g, _ in misses), dtype=np.int64, count=len(misses))
        row_counts = np.frombuffer(rows, dtype=np.int64)[at]
        if rule.sink is not None and rule.sink.rule.kind == "position_split":
            self._position_split(rule, [k for _, k in misses], row_counts)
            return
        for g, key in misses:
            slots[g] = self._slot(rule, key)
        weights = np.frombuffer(sums, dtype=np.float64)[at]
        agg = rule.agg
        if isinstance(agg, HistogramAgg):
            counts = np.frombuffer(hist, dtype=np.int64).reshape(-1, agg.width)[at]  # type: ignore[arg-type]
            agg.add_groups(slots[at], counts, weights, row_counts)
        else:
            agg.add_groups(slots[at], weights, row_counts)

    def _slot(self, rule: _NativeRule, key: bytes) -> int:
        slot = rule.cache.get(key)
        if slot is not None:
            return slot  # type: ignore[no-any-return]
        series = rule.agg.series
        parts = split_key(key, rule.sources)
        if rule.sink is None:  # RED: keyed like Deriver.consume keys it
            svc = "" if parts[0] is None else any_text(parts[0])
            name, kind, code = parts[1], parts[2], parts[3]
            full = (svc, name, kind, code)
            slot = series.index.get(full)
            if slot is None:
                slot = series.slot(full, (svc, name, kind_name(kind), status_name(code)))
        else:
            full = self._labels(rule.sink.rule.labels, parts)
            slot = series.index.get(full)
            if slot is None:
                slot = series.slot(full)
        if slot != series.overflow:
            rule.cache.put(key, slot)
        return slot

    @staticmethod
    def _labels(specs: list[LabelSpec], parts: list[Any]) -> tuple:
        """Label values exactly as the compiled plans (`plan.compile_plan`) compute them."""
        out = []
        for spec, part in zip(specs, parts, strict=False):
            if spec.source == "attribute":
                if spec.buckets is None:
                    out.append(spec.default if part is None else any_text(part))
                else:
                    n = any_number(part)
                    out.append(spec.default if n is None else spec.buckets.label(n))
            elif spec.source == "resource":
                out.append((any_text(part) if part is not None else "") or spec.default)
            elif spec.key == "name":
                out.append(part)
            elif spec.key == "kind":
                out.append(KIND_NAMES.get(part) or kind_name(part))
            else:
                out.append(STATUS_NAMES.get(part) or status_name(part))
        return tuple(out)

    def _position_split(self, rule: _NativeRule, keys: list[bytes], rows: np.ndarray) -> None:
        sink = rule.sink
        assert sink is not None
        ids: list[int] = []
        weights: list[float] = []
        measurements: list[int] = []
        for key, n in zip(keys, rows.tolist(), strict=True):
            pairs = rule.cache.get(key)
            if pairs is None:
                parts = split_key(key, rule.sources)
                count = any_number(parts[-1])
                full = self._labels(sink.rule.labels, parts)
                pairs = tuple(sink.split(full, count)) if count is not None and 1 <= count < 1e6 else ()
                if all(s != sink.agg.series.overflow for s, _ in pairs):
                    rule.cache.put(key, pairs)
            for s, w in pairs:
                ids.append(s)
                weights.append(w * n)
                measurements.append(n)
        if ids:
            sink.agg.add_groups(np.asarray(ids, dtype=np.int64), np.asarray(weights, dtype=np.float64),  # type: ignore[call-arg]
                                np.asarray(measurements, dtype=np.int64))

    def _candidates(self, agg: HistogramAgg, slots: np.ndarray, cands: bytes, raw: bytes) -> None:
        """Offers the reservoir the first span of each (series, bucket) of this request, in (series, bucket)
        order like `Deriver._histogram_batch`. A request has a few candidates per rule, so plain Python: numpy's
        per-call cost is more than the work."""
        reservoir = self.reservoir
        assert reservoir is not None
        width = agg.width
        slot_of = slots.tolist()
        first: dict[int, tuple] = {}  # slot * width + bucket -> the candidate of the lowest span index there
        for cand in CANDIDATE.iter_unpack(cands):
            combined = slot_of[cand[0]] * width + cand[1]
            if first.get(combined, cand)[2] >= cand[2]:
                first[combined] = cand
        for combined in sorted(first):
            slot, b = divmod(combined, width)
            if reservoir.wants(agg, slot, b):
                _, _, _, tid_at, tid_len, sid_at, sid_len, end, dur = first[combined]
                trace_id = raw[tid_at:tid_at + tid_len]
                span_id = raw[sid_at:sid_at + sid_len]
                reservoir.add(trace_id, Candidate(agg, slot, b, Exemplar(trace_id, span_id, dur * 1e-9, end)))
