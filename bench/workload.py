"""The benchmark workload: recommender-shaped OTLP trace export requests, serialized once.

A workload file is a stream of length-delimited `ExportTraceServiceRequest` bytes (varint length, then the
message), so a capture recorded elsewhere (e.g. from the recommender simulator) can replace the generated one.
Generation uses protobuf directly and is seeded, so two runs send the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from processor.otlp_values import kv as _kv

PLACEMENTS = ("home", "product_page", "cart", "email")
MODEL_VERSIONS = ("cf-2024.06.1", "cf-2024.07.0")
SEARCH_WORDS = ("running shoes", "red dress", "gift for dad", "usb-c cable", "coffee grinder", "tent 4p")
SPECIAL_KINDS = ("error", "fallback", "cold_start", "slow")


@dataclass
class Workload:
    """Pre-serialized requests and what they hold."""

    requests: list[bytes]
    spans: list[int]  # spans per request, same order
    traces: int = 0
    special_traces: int = 0
    # Generated workloads only: special trace id -> kind (error, fallback, cold_start, slow), the ground truth
    # of what a tail sampler must keep.
    special_ids: dict[bytes, str] = field(default_factory=dict)

    @property
    def total_spans(self) -> int:
        return sum(self.spans)

    @property
    def total_bytes(self) -> int:
        return sum(len(r) for r in self.requests)


# ---------------------------------------------------------------- file format

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def write_workload(path: Path, requests: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for raw in requests:
            f.write(_varint(len(raw)))
            f.write(raw)


def read_requests(path: Path) -> list[bytes]:
    """Length-delimited request bytes from `path`."""
    data = Path(path).read_bytes()
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        length = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError(f"{path}: truncated length prefix at byte {pos}")
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > len(data):
            raise ValueError(f"{path}: record of {length} bytes at {pos} runs past the end of the file")
        out.append(data[pos:pos + length])
        pos += length
    if not out:
        raise ValueError(f"{path}: no requests in workload file")
    return out


def load_workload(path: Path) -> Workload:
    """Read a workload file; parses each request once to count its spans (and checks it is OTLP)."""
    requests = read_requests(path)
    spans = []
    traces: set[bytes] = set()
    for raw in requests:
        req = ExportTraceServiceRequest.FromString(raw)
        n = 0
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                n += len(ss.spans)
                traces.update(s.trace_id for s in ss.spans)
        spans.append(n)
    return Workload(requests, spans, traces=len(traces))


# ---------------------------------------------------------------- generation


class _TraceMaker:
    def __init__(self, rng: random.Random, tracestate: str = "") -> None:
        self.rng = rng
        self.tracestate = tracestate
        self.recent_roots: list[tuple[bytes, bytes, str, str, str, str]] = []
        self.special_ids: dict[bytes, str] = {}

    def _id(self, n: int) -> bytes:
        return self.rng.getrandbits(8 * n).to_bytes(n, "big")

    def _span(self, trace_id: bytes, parent: bytes, name: str, kind: int, start: int, dur: int) -> Span:
        return Span(trace_id=trace_id, span_id=self._id(8), parent_span_id=parent, name=name, kind=kind,
                    start_time_unix_nano=start, end_time_unix_nano=start + dur, trace_state=self.tracestate)

    def recommendation(self, now: int, special: str | None) -> list[Span]:
        """One `reco.generate` trace of 8-12 spans."""
        rng = self.rng
        tid = self._id(16)
        if special is not None:
            self.special_ids[tid] = special
        user = rng.randrange(1, 200_000)
        placement = rng.choice(PLACEMENTS)
        model = rng.choice(MODEL_VERSIONS)
        variant = rng.choice("AB")
        fallback = special == "fallback"
        # As in the recommender: popularity serves only fallbacks and cold starts (both special traces).
        cold = special == "cold_start"
        strategy = "popularity" if fallback or cold else "cf"
        n_results = rng.choice((4, 8, 10, 12, 20))
        shards = rng.randint(1, 3)
        # 4 + sources + 2 * shards spans: 8-12.
        sources = 2 if shards == 1 else rng.randint(1, 2)
        total_ms = rng.uniform(520, 1400) if special == "slow" else rng.uniform(12, 120)
        dur = int(total_ms * 1e6)
        root = self._span(tid, b"", "reco.generate", Span.SPAN_KIND_SERVER, now - dur, dur)
        request_id = f"req-{self._id(6).hex()}"
        root.attributes.extend([
            _kv("reco.request_id", request_id), _kv("reco.placement", placement),
            _kv("reco.model_version", model), _kv("experiment.variant", variant),
            _kv("reco.strategy", strategy), _kv("reco.cold_start", cold), _kv("reco.fallback", fallback),
            _kv("reco.num_candidates", rng.randrange(100, 2000)), _kv("reco.num_results", n_results),
            _kv("user.id", f"u{user}"), _kv("user.email", f"user{user}@example.com"),
            _kv("client.address", f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"),
            _kv("http.route", "/recommendations"), _kv("http.request.method", "GET"),
            _kv("http.response.status_code", 500 if special == "error" else 200),
        ])
        if rng.random() < 0.3:
            root.attributes.append(_kv("reco.search_query", rng.choice(SEARCH_WORDS)))
        spans = [root]
        t = root.start_time_unix_nano + 200_000
        step = dur // 8

        def child(parent: Span, name: str, start: int, length: int, kind: int = Span.SPAN_KIND_INTERNAL) -> Span:
            span = self._span(tid, parent.span_id, name, kind, start, max(length, 10_000))
            spans.append(span)
            return span

        hist = child(root, "reco.fetch_user_history", t, step, Span.SPAN_KIND_CLIENT)
        hist.attributes.extend([_kv("db.system", "redis"), _kv("db.operation", "LRANGE"),
                                _kv("reco.history_length", rng.randrange(0, 300))])
        for i in range(sources):
            cand = child(root, "reco.fetch_candidates", t + step, step)
            cand.attributes.extend([_kv("reco.candidate_source", ("cf", "popularity")[i]),
                                    _kv("reco.num_candidates", rng.randrange(50, 1000))])
        score = child(root, "reco.score_candidates", t + 2 * step, 4 * step)
        score.attributes.append(_kv("reco.shards", shards))
        failing: Span | None = None
        for s in range(shards):
            sub = 4 * step // shards
            emb = child(score, "reco.fetch_embeddings", t + 2 * step + s * sub, sub // 2, Span.SPAN_KIND_CLIENT)
            emb.attributes.extend([_kv("reco.cache_hit", rng.random() < 0.8), _kv("reco.shard", s)])
            inf = child(score, "reco.model_inference", t + 2 * step + s * sub + sub // 2, sub // 2)
            inf.attributes.extend([_kv("reco.model_version", model), _kv("reco.batch_size", 64)])
            failing = inf
        post = child(root, "reco.post_process", t + 6 * step, step)
        post.attributes.append(_kv("reco.num_results", n_results))
        if special == "error" and failing is not None:
            for span in (failing, root):
                span.status.code = Status.STATUS_CODE_ERROR
                span.status.message = "model server unavailable"
                event = span.events.add(name="exception", time_unix_nano=span.end_time_unix_nano)
                event.attributes.extend([_kv("exception.type", "ModelServerError"),
                                         _kv("exception.message", "model server unavailable")])
        self.recent_roots = (self.recent_roots + [(tid, root.span_id, request_id, placement, model, variant)])[-50:]
        return spans

    def click(self, now: int, conversion: bool) -> list[Span]:
        """A `reco.click` / `reco.conversion` trace linking to an earlier `reco.generate`."""
        tid, root_sid, request_id, placement, model, variant = self.rng.choice(self.recent_roots)
        name = "reco.conversion" if conversion else "reco.click"
        span = self._span(self._id(16), b"", name, Span.SPAN_KIND_SERVER, now - 3_000_000, 3_000_000)
        span.links.add(trace_id=tid, span_id=root_sid)
        span.attributes.extend([
            _kv("reco.request_id", request_id), _kv("reco.item_id", f"item-{self.rng.randrange(50_000)}"),
            _kv("reco.position", self.rng.randint(1, 12)), _kv("reco.placement", placement),
            _kv("reco.model_version", model), _kv("experiment.variant", variant),
            _kv("user.id", f"u{self.rng.randrange(1, 200_000)}"),
        ])
        if conversion:
            span.attributes.append(_kv("reco.revenue", round(self.rng.uniform(5, 250), 2)))
        return [span]


def _resource(pod: int) -> ResourceSpans:
    rs = ResourceSpans(schema_url="https://opentelemetry.io/schemas/1.26.0")
    rs.resource.attributes.extend([
        _kv("service.name", "recommendation-service"), _kv("service.version", "1.8.2"),
        _kv("deployment.environment", "prod"), _kv("k8s.namespace.name", "reco"),
        _kv("k8s.pod.name", f"recommendation-service-7d9f8-{pod:05d}"), _kv("host.name", f"node-{pod % 7}"),
        _kv("telemetry.sdk.name", "opentelemetry"), _kv("telemetry.sdk.language", "python"),
        _kv("telemetry.sdk.version", "1.27.0"),
    ])
    return rs


def generate(requests: int = 64, spans_per_request: int = 800, seed: int = 7,
             special_rate: float = 0.04, click_rate: float = 0.05, tracestate: str = "") -> Workload:
    """`requests` export requests of about `spans_per_request` spans each (whole traces, 1-2 pods each).
    `tracestate` goes on every span (e.g. `ot=th:0`: sampled upstream at 100 % by a consistent sampler)."""
    rng = random.Random(seed)
    maker = _TraceMaker(rng, tracestate)
    now = 1_760_000_000_000_000_000
    out: list[bytes] = []
    counts: list[int] = []
    traces = special = 0
    for _ in range(requests):
        req = ExportTraceServiceRequest()
        pods = [_resource(rng.randrange(40)) for _ in range(rng.randint(1, 2))]
        for rs in pods:
            rs.scope_spans.append(ScopeSpans())
            rs.scope_spans[0].scope.name = "recommender"
            rs.scope_spans[0].scope.version = "1.8.2"
        n = 0
        while n < spans_per_request:
            now += rng.randrange(50_000, 2_000_000)
            if maker.recent_roots and rng.random() < click_rate:
                spans = maker.click(now, conversion=rng.random() < 0.2)
            else:
                kind = rng.choice(SPECIAL_KINDS) if rng.random() < special_rate else None
                spans = maker.recommendation(now, kind)
                special += kind is not None
            traces += 1
            rng.choice(pods).scope_spans[0].spans.extend(spans)
            n += len(spans)
        req.resource_spans.extend(pods)
        out.append(req.SerializeToString())
        counts.append(n)
    return Workload(out, counts, traces=traces, special_traces=special, special_ids=maker.special_ids)


# ---------------------------------------------------------------- fresh trace ids on replay

class TraceIdRewriter:
    """Gives each replay of a request fresh trace ids without re-encoding it.

    Finds every trace id's bytes (span trace ids and link trace ids) once, then for each replay overwrites
    their first four bytes with a replay counter: a tail sampler sees new traces, not the same ones again.
    With `fresh_right_half`, bytes 12-15 are also XORed with a scrambled counter, so replayed ids differ in
    both halves as random W3C ids do: the collector's tail-sampling decision cache is keyed by the right half
    (bytes 8-15) alone, and would answer every replay from the first pass's decisions. Bytes 4-11 stay the
    original's (the capture sink recognises special traces by them).
    """

    def __init__(self, raw: bytes, fresh_right_half: bool = False) -> None:
        req = ExportTraceServiceRequest.FromString(raw)
        ids = {span.trace_id for rs in req.resource_spans for ss in rs.scope_spans for span in ss.spans}
        ids |= {link.trace_id for rs in req.resource_spans for ss in rs.scope_spans
                for span in ss.spans for link in span.links}
        offsets: list[int] = []
        for tid in ids:
            if len(tid) != 16:
                continue
            at = raw.find(tid)
            while at != -1:
                offsets.append(at)
                at = raw.find(tid, at + 16)
        base = np.array(sorted(offsets), dtype=np.int64)
        self.index = (base[:, None] + np.arange(4)).ravel()
        self.copies = len(base)
        self.raw = raw
        self.right: np.ndarray | None = None
        self.right_original: np.ndarray | None = None
        if fresh_right_half:
            self.right = (base[:, None] + 12 + np.arange(4)).ravel()
            self.right_original = np.frombuffer(raw, dtype=np.uint8)[self.right]

    def replay(self, generation: int) -> bytes:
        if not self.copies:
            return self.raw
        buf = np.frombuffer(bytearray(self.raw), dtype=np.uint8)
        stamp = np.frombuffer((generation & 0xFFFFFFFF).to_bytes(4, "big"), dtype=np.uint8)
        buf[self.index] = np.tile(stamp, self.copies)
        if self.right is not None and self.right_original is not None:
            # An odd multiplier is a bijection on 32 bits: distinct replays get distinct masks; 0 keeps the id.
            mask = np.frombuffer(((generation * 0x9E3779B1) & 0xFFFFFFFF).to_bytes(4, "big"), dtype=np.uint8)
            buf[self.right] = self.right_original ^ np.tile(mask, self.copies)
        return buf.tobytes()
