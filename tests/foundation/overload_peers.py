"""What the overload soak runs around the hop: error traces from a well-behaved client, a sink that watches
them without keeping everything, and a once-a-second sampler of the hop's RSS and refusal counter."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from otlp_peers import CaptureServer, metric_sum

from bench.procs import rss_bytes
from processor.otlp_values import kv
from processor.retryinfo import retry_delay
from processor.signals import METHOD_PATHS, count_items

SpanId = tuple[bytes, bytes]  # (trace id, span id)


def error_trace_request(rng: random.Random, traces: int) -> tuple[bytes, set[SpanId]]:
    """`traces` recommender-shaped failed recommendations (model inference down) in one request, and the
    (trace id, span id) of every span in it."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", "recommendation-service"),
                                   kv("k8s.pod.name", "recommendation-service-overload")])
    scope = rs.scope_spans.add()
    scope.scope.name = "recommender"
    now = time.time_ns()
    ids: set[SpanId] = set()
    for _ in range(traces):
        trace_id = rng.randbytes(16)

        def span(name: str, parent: bytes, kind: int = Span.SPAN_KIND_INTERNAL, trace_id: bytes = trace_id) -> Span:
            s = scope.spans.add(trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=parent, name=name,
                                kind=kind, start_time_unix_nano=now - 40_000_000, end_time_unix_nano=now)
            s.attributes.extend([kv("reco.placement", "home"), kv("reco.model_version", "cf-2024.07.0"),
                                 kv("experiment.variant", "A")])
            ids.add((trace_id, s.span_id))
            return s

        root = span("reco.generate", b"", Span.SPAN_KIND_SERVER)
        root.attributes.extend([kv("reco.request_id", f"req-{rng.randbytes(6).hex()}"),
                                kv("reco.strategy", "cf"), kv("reco.cold_start", False), kv("reco.fallback", False),
                                kv("reco.num_results", 0), kv("user.id", f"u{rng.randrange(1, 200_000)}")])
        span("reco.fetch_user_history", root.span_id, Span.SPAN_KIND_CLIENT)
        score = span("reco.score_candidates", root.span_id)
        failed = span("reco.model_inference", score.span_id)
        span("reco.post_process", root.span_id)
        for s in (failed, root):
            s.status.code = Status.STATUS_CODE_ERROR
            s.status.message = "model server unavailable"
            event = s.events.add(name="exception", time_unix_nano=now)
            event.attributes.extend([kv("exception.type", "ModelServerError")])
    return request.SerializeToString(), ids


@dataclass
class WellBehavedClient:
    """Sends each request until it is acknowledged: on RESOURCE_EXHAUSTED/UNAVAILABLE it waits what the
    server's RetryInfo asks (exponential backoff when there is none) and tries again. `close()` ends any
    retrying at once, so nothing outlives the test."""

    endpoint: str
    refusals: dict[str, int] = field(default_factory=dict)
    with_retry_info: int = 0
    attempts: int = 0
    longest_send: float = 0.0  # seconds from first attempt to acknowledgment
    failures: list[str] = field(default_factory=list)
    closing: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.endpoint)
        self.call = self.channel.unary_unary(METHOD_PATHS["traces"])

    def send(self, raw: bytes, give_up_after: float = 60.0) -> bool:
        began = time.monotonic()
        deadline = began + give_up_after
        backoff = 0.1
        while time.monotonic() < deadline and not self.closing.is_set():
            self.attempts += 1
            try:
                self.call(raw, timeout=10.0)
                self.longest_send = max(self.longest_send, time.monotonic() - began)
                return True
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                if code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                                grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.failures.append(code.name)
                    return False
                self.refusals[code.name] = self.refusals.get(code.name, 0) + 1
                delay = retry_delay(error)
                if delay is not None:
                    self.with_retry_info += 1
                else:
                    delay, backoff = backoff, min(backoff * 2, 2.0)
                self.closing.wait(delay)  # the backoff the server asked for, cut short only by close()
        self.failures.append("closed" if self.closing.is_set() else "gave up")
        return False

    def close(self) -> None:
        self.closing.set()
        self.channel.close()


class WatchingSink:
    """The hop's next hop: counts every span delivered, but keeps only the ids of spans of watched traces.
    A minute of overload delivers hundreds of thousands of sampled spans; storing and re-parsing them all
    would load the test process that also runs the error-trace client."""

    def __init__(self) -> None:
        self.server = CaptureServer(keep_raw=False, respond_with=self._take).start()
        self.lock = threading.Lock()
        self.spans = 0
        self.watched: frozenset[bytes] = frozenset()
        self.arrived: set[SpanId] = set()

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def watch(self, ids: set[SpanId]) -> None:
        """Call before sending those spans."""
        with self.lock:
            self.watched = self.watched | {trace_id for trace_id, _ in ids}

    def _take(self, signal: str, raw: bytes) -> None:
        if signal != "traces":
            return None
        spans = count_items("traces", raw)
        watched = self.watched
        found: set[SpanId] = set()
        if any(trace_id in raw for trace_id in watched):  # a byte search; parse only when one is in there
            request = ExportTraceServiceRequest.FromString(raw)
            found = {(s.trace_id, s.span_id) for rs in request.resource_spans for ss in rs.scope_spans
                     for s in ss.spans if s.trace_id in watched}
        with self.lock:
            self.spans += spans
            self.arrived |= found
        return None

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Sample:
    at: float  # monotonic seconds
    rss: int
    refused: float | None  # recohop_refused_requests_total; None when /metrics did not answer in time


class Sampler(threading.Thread):
    """Once a second: the hop's VmRSS and its refusal counter."""

    def __init__(self, pid: int, metrics_url: str) -> None:
        super().__init__(daemon=True, name="overload-sampler")
        self.pid = pid
        self.metrics_url = metrics_url
        self.samples: list[Sample] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                rss = rss_bytes(self.pid)
            except OSError:  # the hop is gone; the test reports that itself
                return
            try:
                refused: float | None = metric_sum(self.metrics_url, "recohop_refused_requests_total", timeout=2.0)
            except OSError:
                refused = None
            self.samples.append(Sample(time.monotonic(), rss, refused))
            self.stopping.wait(1.0)

    def stop(self) -> list[Sample]:
        self.stopping.set()
        self.join(10)
        return self.samples
