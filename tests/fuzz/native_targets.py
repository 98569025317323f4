"""Every native entry point with a differential oracle against its pure-Python reference path, shared by the
fuzzers (fuzz_native.py, built with ASan + UBSan) and the regression tests (test_fuzz_regressions.py).

`TARGETS[name](data)` takes one fuzz input: byte 0 chooses how the request is re-encoded (low 2 bits: as given,
fields reversed as otelcol writes them, or a random valid non-canonical encoding from noncanonical.py) and a
configuration (the other bits); the rest is a serialized ExportTraceServiceRequest. Bytes the protobuf parser
refuses only go through the scanners (the sanitizers judge those); bytes it accepts, in every encoding, must give
what the reference gives on the parsed message, or the scanner must hand them to the reference (None). A
difference raises AssertionError; so does anything the reference path itself raises on a parsable request (no
attribute value may cost more than itself).

The stateful stages (span metrics, the trace buffer and the trace store) keep one native and one Python instance
that see the same inputs in the same order and are compared after each; they start afresh every RESET inputs so
a finding is reproducible from the last few inputs (the regression tests replay each input on fresh instances).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for extra in (HERE.parent, HERE.parent / "sampling", HERE.parent / "spanmetrics", HERE.parents[1]):  # + bench/
    if str(extra) not in sys.path:
        sys.path.append(str(extra))
PSEUDONYM_KEY = "fuzz-pseudonym-key-0123456789"  # set only while a redaction stage is built (never leaks)

from google.protobuf.message import DecodeError  # noqa: E402
from noncanonical import reencode  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from wire_encodings import reversed_fields  # noqa: E402

from processor.config_node import Node  # noqa: E402
from processor.limits.check import Counts, scan_message  # noqa: E402
from processor.limits.settings import Limits  # noqa: E402
from processor.native import load  # noqa: E402
from processor.redaction.detectors import possible_kinds  # noqa: E402
from processor.redaction.native import KIND_IDS  # noqa: E402
from processor.redaction.rules import DEFAULT_RULES  # noqa: E402
from processor.stages.base import StageContext  # noqa: E402

NOW = 1_760_000_000_000_000_000
RESET = 16

Request = ExportTraceServiceRequest


def split(data: bytes) -> tuple[int, bytes]:
    return (data[0], data[1:]) if data else (0, b"")


def parse(body: bytes) -> Request | None:
    try:
        return Request.FromString(body)
    except (DecodeError, RuntimeError, ValueError):
        return None


def variants(message: Request, opt: int, body: bytes) -> list[bytes]:
    """The request as given, plus the re-encoding byte 0 asks for (each parses to the same message)."""
    out = [body]
    mode = opt & 3
    if mode == 1:
        out.append(reversed_fields(message))
    elif mode >= 2:
        again = reencode(message, seed=opt * 7919 + len(body), rate=0.3 if mode == 2 else 0.6)
        if again is not None:
            out.append(again)
    return out


def known(message: Request) -> Request:
    """The message without unknown fields (they mean nothing; the paths keep them in different places)."""
    copy_ = Request()
    copy_.CopyFrom(message)
    copy_.DiscardUnknownFields()
    return copy_


# ---------------------------------------------------------------- _limits

LIMITS = [Limits(), Limits(max_attributes_per_span=3, max_attribute_value_length=6, max_attributes_per_resource=2,
                           max_events_per_span=1, max_links_per_span=1, max_attributes_per_event=1,
                           max_attributes_per_link=1)]


def check_limits(data: bytes) -> None:
    native = load("limits")
    assert native is not None
    opt, body = split(data)
    limits = LIMITS[(opt >> 2) % len(LIMITS)]
    window = limits.time_window(NOW)
    vouched = native.scan(body, limits.native_tuple(), *window)
    message = parse(body)
    # A tuple vouches that the bytes parse: the receiver then does not parse them itself.
    assert vouched is None or message is not None, "scan accepted bytes protobuf refuses"
    if message is None:
        return
    want = scan_message(message, limits, window)
    for raw in variants(message, opt, body):
        found = native.scan(raw, limits.native_tuple(), *window)
        assert found is None or Counts(*found) == want, (found, want)


# ---------------------------------------------------------------- _redact

ACTIONS_RULES: dict[str, Any] = {
    "detectors": {"kinds": list(KIND_IDS)},
    "summary_attribute": True,
    "rules": [
        {"key": "user.id", "action": "pseudonymise", "prefix": "u_"},
        {"glob": "user.*", "action": "mask", "with": "<user>"},
        {"key": "client.address", "action": "generalise", "as": "ip"},
        {"key": "user_age", "action": "generalise", "as": "age"},
        {"key": "geo", "action": "generalise", "as": "geo"},
        {"key": "secret", "action": "drop"},
        {"key": "note_raw", "action": "keep", "detectors": False},
    ],
}
ALLOWLIST_RULES: dict[str, Any] = {
    "mode": "allowlist", "otherwise": "mask", "mask_text": "<x>", "summary_attribute": True,
    "detectors": {"kinds": ["email", "ipv4"]},
    "rules": [{"key": "reco.placement", "action": "keep"}, {"key": "service.name", "action": "keep"},
              {"key": "enduser.id", "action": "pseudonymise"}, {"key": "k", "action": "drop", "name": "k-drop"}],
}
REDACTION_RULES = [DEFAULT_RULES, ACTIONS_RULES, ALLOWLIST_RULES]
_redaction: dict[int, tuple[Any, Any, CollectorRegistry, CollectorRegistry]] = {}


def _redaction_stage(rules: dict[str, Any], native: bool, registry: CollectorRegistry) -> Any:
    from processor.stages.redaction import build

    overrides = {"RECOHOP_NATIVE": "1" if native else "0", "RECOHOP_PSEUDONYM_KEY": PSEUDONYM_KEY}
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        stage = build(Node({"type": "redaction", **copy.deepcopy(rules)}, "<fuzz>"), StageContext(registry=registry))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert (getattr(stage, "native", None) is not None) == native
    return stage


def _audit(registry: CollectorRegistry) -> list[tuple[str, tuple, float]]:
    return sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                  for m in registry.collect() for s in m.samples if s.name.endswith("_total"))


def check_redact(data: bytes) -> None:
    module = load("redact")
    assert module is not None
    opt, body = split(data)
    which = (opt >> 2) % len(REDACTION_RULES)
    if which not in _redaction:
        registries = CollectorRegistry(), CollectorRegistry()
        _redaction[which] = (_redaction_stage(REDACTION_RULES[which], True, registries[0]),
                             _redaction_stage(REDACTION_RULES[which], False, registries[1]), *registries)
    native, python, native_registry, python_registry = _redaction[which]
    text = body[:96]
    kinds = module.possible_kinds(text)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        assert kinds is None
    else:  # the prefilter may let more through, never less
        wanted = sum(1 << KIND_IDS[k] for k in possible_kinds(decoded)) if len(decoded) >= 3 else 0
        assert kinds is not None and kinds & wanted == wanted, (decoded, kinds, wanted)
    message = parse(body)
    if message is None:
        native.prepare_trace_bytes(body)  # memory safety only: the receiver refuses such bytes
        native.native.scanner.redact(body)
        return
    for i, raw in enumerate(variants(message, opt, body)):
        if (opt + i) % 2:  # as the pipeline calls it: walked ahead of the stage's lock, then used
            native.prepare_trace_bytes(raw)
        (native_out,) = native.on_trace_bytes(raw)
        (python_out,) = python.on_traces(known(Request.FromString(raw)))
        assert known(Request.FromString(native_out)) == known(python_out)
        assert _audit(native_registry) == _audit(python_registry)


# ---------------------------------------------------------------- _spanscan


class SpanMetricsPair:
    """A span-metrics stage with the native scanner and one on the Python path, fed the same requests."""

    def __init__(self) -> None:
        import test_spanmetrics_native as reference

        self.reference = reference
        rules = Path(tempfile.mkdtemp(prefix="recohop-fuzz-")) / "rules.yaml"
        rules.write_text(reference.DEFAULT_RULES.read_text() + "\n"
                         + "\n".join(reference.EXTRA_RULES.strip().splitlines()[1:]) + "\n")
        self.rules = rules
        self.fresh()
        self.garbage_stage, _ = reference.make_stage(True, rules, [0.0])

    def fresh(self) -> None:
        self.clock = [0.0]
        self.native, self.native_ctx = self.reference.make_stage(True, self.rules, self.clock)
        self.python, self.python_ctx = self.reference.make_stage(False, self.rules, self.clock)
        self.fed = 0

    def feed(self, raw: bytes) -> None:
        if self.fed >= RESET:
            self.fresh()
        self.fed += 1
        self.clock[0] += 1.0
        if self.fed % 3 == 1:  # as the pipeline calls it: walked ahead, applied under the lock
            self.native.prepare_trace_bytes(raw)
        elif self.fed % 3 == 2:  # walked as a job of a `_nogil.run_jobs` batch (`Pipeline._run_jobs`)
            run_jobs(self.native.prepare_job(raw))
        assert self.native.on_trace_bytes(raw) == [raw]
        self.python.on_traces(known(Request.FromString(raw)))
        self.native.flush(self.clock[0])
        self.python.flush(self.clock[0])
        own = self.fed in (1, RESET)  # the self-metrics scrape is the slow part: first and last of a run
        a, b = self.state(self.native, self.native_ctx, own), self.state(self.python, self.python_ctx, own)
        assert a["series"] == b["series"] and a["exact"] == b["exact"] and a["pending"] == b["pending"]
        assert a["self"] == b["self"] and len(a["sums"]) == len(b["sums"])
        for x, y in zip(a["sums"], b["sums"], strict=True):
            assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), (x, y)


    def state(self, stage: Any, ctx: Any, own_metrics: bool) -> dict[str, Any]:
        """test_spanmetrics_native.state, with the cardinality self-metrics read from the registry directly (its
        text scrape costs ~0.3 s per call)."""
        deriver = stage.deriver
        exact: list[Any] = []
        sums: list[float] = []
        for metric in deriver.snapshot():
            for p in metric.points:
                exact.append((metric.name, sorted(p.labels.items()), p.buckets,
                              sorted((b, e.trace_id, e.span_id, e.value, e.time_unix_nano)
                                     for b, e in p.exemplars.items())))
                sums.append(p.value)
        aggs = ([deriver.red] if deriver.red else []) + [s.agg for s in deriver.sinks]
        series = [(a.name, list(a.series.keys), sorted(map(repr, a.series.limiter.admitted))) for a in aggs]
        reservoir = deriver.reservoir
        pending = [(tid, added, [(c.agg.name, c.slot, c.bucket, c.exemplar) for c in cands])
                   for tid, (added, cands) in reservoir.pending.items()] if reservoir else []
        own = sorted((s.name, tuple(sorted(s.labels.items())), s.value) for m in ctx.registry.collect()
                     for s in m.samples if s.name.startswith("recohop_cardinality")
                     and not s.name.endswith("_created")) if own_metrics else []
        return {"exact": exact, "sums": sums, "series": series, "pending": pending, "self": own}


_spanmetrics: list[SpanMetricsPair] = []


# Faults of reference paths outside processor/native/ that were reported and await their fix elsewhere: the fuzzers
# step over them (so a CI failure means a scanner), and tests/fuzz/known/ keeps each input as a strict xfail that
# fails once the fault is fixed (then delete the entry here and move the input to regressions/).
KNOWN_FAULTS: list[tuple[type[BaseException], str, str]] = [
    # (none open; the span name holding NUL that made processor/spanmetrics/plan.py raise is fixed and its input
    # is in regressions/spanscan/)
]
tolerate_known_faults = True


def known_fault(exc: BaseException) -> bool:
    frames = [frame.filename for frame in traceback.extract_tb(exc.__traceback__)]
    return tolerate_known_faults and any(
        isinstance(exc, kind) and text in str(exc) and any(where in f for f in frames)
        for kind, text, where in KNOWN_FAULTS)


def check_spanscan(data: bytes) -> None:
    if not _spanmetrics:
        _spanmetrics.append(SpanMetricsPair())
    pair = _spanmetrics[0]
    opt, body = split(data)
    message = parse(body)
    if message is None:  # memory safety on bytes the receiver refuses (results not compared)
        native = pair.garbage_stage.deriver.native
        try:
            if opt & 0x80:
                native.walk(body)  # the walk ahead, which the consume then takes over
            elif opt & 0x40:
                run_jobs(native.walk_job(body))
            native.consume(body)
        except DecodeError:
            pass  # a group key the scanner framed from such bytes: upb refuses it too
        return
    for raw in variants(message, opt, body):
        try:
            pair.feed(raw)
        except Exception as exc:
            if not known_fault(exc):
                raise
            pair.fresh()  # the native stage took the request, the Python one did not: start both afresh
            return


# ---------------------------------------------------------------- _tracestore


def save_sequence(target: str, history: list[bytes]) -> None:
    """A stateful finding is the sequence of requests since the last fresh start: written (one file per request,
    in order) under $RECOHOP_FUZZ_SEQUENCES/<target>/ for the regression tests, when that variable is set."""
    where = os.environ.get("RECOHOP_FUZZ_SEQUENCES")
    if not where:
        return
    directory = Path(where) / target
    directory.mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(history):
        (directory / f"{i:03d}").write_bytes(b"\x00" + raw)


class SamplingPair:
    """Two tail-sampling stages fed the same requests: the native trace store under test and the Python
    trace buffer (the reference)."""

    def __init__(self) -> None:
        import test_sampling_store as reference

        from processor.stages import tail_sampling as stage_module

        self.reference, self.stage_module = reference, stage_module
        self.policies = reference.policy_file(Path(tempfile.mkdtemp(prefix="recohop-fuzz-")), reference.ALL_KINDS)
        self.fresh()
        self.garbage = self.harness(True)

    def harness(self, native: bool) -> Any:
        from sampling_helpers import Harness

        available = self.stage_module.native_store_available
        if not native:
            self.stage_module.native_store_available = lambda: False
        try:
            return Harness(self.policies, max_spans_per_trace=6, decision_cache_size=8)
        finally:
            self.stage_module.native_store_available = available

    def fresh(self) -> None:
        self.native, self.python = self.harness(True), self.harness(False)
        self.fed = 0
        self.odd = False  # fed bytes other than protobuf's own encoding since the last fresh start
        self.history: list[bytes] = []  # what was fed since then (a finding is this sequence)

    @staticmethod
    def send(h: Any, raw: bytes) -> None:
        # as the pipeline does: the native store reads it ahead, without the GIL (alone, or as a job of a batch)
        # (the job may buffer the request itself: then `job_done` answers, or intake reads the job's answer)
        done = None
        if len(raw) % 2:
            h.stage.prepare_trace_bytes(raw)
        else:
            job = h.stage.prepare_job(raw)
            run_jobs(job)
            done = h.stage.job_done(raw, job) if job is not None else None
        if done is None:
            done = h.stage.on_trace_bytes(raw)
        h.traces.extend(Request.FromString(r) for r in done)
        h.advance(0.7, step=0.35)

    def feed(self, raw: bytes) -> None:
        if self.fed >= RESET:
            self.finish()
            self.fresh()
        self.fed += 1
        self.history.append(raw)
        self.odd |= known(Request.FromString(raw)).SerializeToString() != raw
        self.send(self.native, raw)
        # The reference reads what the request means: unknown fields dropped (the Python trace buffer searches
        # its chunks for protobuf's own encoding of attribute values, and upb re-serializes unknown fields
        # where they came, e.g. inside a KeyValue: that is the Python path's limit, not the scanner's).
        self.send(self.python, known(Request.FromString(raw)).SerializeToString())
        try:
            self.compare()
        except AssertionError:
            save_sequence("tracestore", self.history)
            raise

    @staticmethod
    def sent(h: Any) -> Counter[tuple[bytes, bytes, bytes]]:
        """Every (resource, scope, span) sent on: the native paths group spans by the bytes their resource and
        scope came in, the Python paths by the parsed messages, so equal resources in two encodings may travel
        in one ResourceSpans or in two; what arrives is the same."""
        out: Counter[tuple[bytes, bytes, bytes]] = Counter()
        for request in h.traces:
            for rs in known(request).resource_spans:
                resource = rs.resource.SerializeToString(deterministic=True) + rs.schema_url.encode()
                for ss in rs.scope_spans:
                    scope = ss.scope.SerializeToString(deterministic=True) + ss.schema_url.encode()
                    for span in ss.spans:
                        out[(resource, scope, span.SerializeToString(deterministic=True))] += 1
        return out

    def compare(self) -> None:
        assert self.native.decisions == self.python.decisions
        assert self.sent(self.native) == self.sent(self.python)
        a, b = self.reference.sampling_metrics(self.native), self.reference.sampling_metrics(self.python)
        if self.odd:  # the native paths hold (and count) spans as they came; Python re-serializes them
            for metrics in (a, b):
                metrics.pop(("recohop_sampling_buffer_bytes", ()), None)
        assert a == b

    def finish(self) -> None:
        self.native.shutdown()
        self.python.shutdown()
        self.compare()

    def garbage_intake(self, body: bytes) -> None:
        """Memory safety on any bytes: the store alone (its results are not compared)."""
        from processor.sampling.buffer import Late

        store = self.garbage.stage.store
        try:
            if len(body) % 2:  # the first pass ahead (without the GIL), then the intake that uses it
                store.prepare(body)
            else:  # a job that may buffer the request itself (intake then reads its answer)
                run_jobs(store.prepare_job(body, 0.0))
            store.add_span_bytes(body, 0.0, Late())
        except DecodeError:
            if parse(body) is not None:
                raise  # a request upb accepts must never make the store's callbacks fail
            # else: the group callback parses the resource/scope framed from bytes upb refuses
        if store.stats()[0] > 2000:
            self.garbage = self.harness(True)


_sampling: list[SamplingPair] = []


def run_jobs(*jobs: Any) -> None:
    """Jobs run as `Pipeline._run_jobs` runs them (a job that raises is walked again by its stage)."""
    from processor.native import load

    nogil = load("nogil")
    ready = tuple(job for job in jobs if job is not None)
    if nogil is not None and ready:
        try:
            nogil.run_jobs(ready)
        except Exception:  # noqa: BLE001, S110 - as the pipeline: the stage walks again and raises there
            pass


def check_tracestore(data: bytes) -> None:
    if not _sampling:
        _sampling.append(SamplingPair())
    pair = _sampling[0]
    opt, body = split(data)
    pair.garbage_intake(body)
    message = parse(body)
    if message is None:
        return
    for raw in variants(message, opt, body):
        pair.feed(raw)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "limits": check_limits,
    "redact": check_redact,
    "spanscan": check_spanscan,
    "tracestore": check_tracestore,
}


def reset() -> None:
    """Fresh stateful pairs (the regression tests replay each input on its own)."""
    _spanmetrics.clear()
    _sampling.clear()
