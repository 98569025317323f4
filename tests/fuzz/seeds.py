"""The fuzzers' starting corpus, from the workloads the hop is benchmarked and tested on (small requests, so each
mutation runs fast), plus the odd inputs the review found: values no generalisation reads and otelcol's field
order. Every seed goes in with several option bytes (see native_targets.py: how it is re-encoded, which rules)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for extra in (HERE.parent, HERE.parent.parent):
    if str(extra) not in sys.path:
        sys.path.append(str(extra))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status  # noqa: E402

from bench.sampling_workload import all_spans, make_traces, to_requests  # noqa: E402
from bench.spanmetrics_workload import make_recos, requests_for  # noqa: E402
from bench.workload import generate  # noqa: E402
from processor.otlp_values import kv  # noqa: E402

OPTIONS = (0x00, 0x01, 0x02, 0x07, 0x0B)  # as given / reversed / re-encoded; three rule sets and limits


def odd_requests() -> list[bytes]:
    """Poison values and odd ids: what the review found, kept as seeds so mutations start from them."""
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    values = ["².1.1.1", "١.٢.٣.٤", "1.2.3.4", "::ffff:10.0.0.1", "0044 20 7946 0958", "a@b.io", "DE89 3704 0044 0532 0130 00",
              "x" * 70, "²³", "1e400", "-5", "US-CA"]
    for i, value in enumerate(values):
        span = spans.add(trace_id=bytes([i + 1]) * 16, span_id=bytes([i + 1]) * 8, name="reco.generate",
                         start_time_unix_nano=10**18, end_time_unix_nano=10**18 + 1000,
                         status=Status(code=Status.STATUS_CODE_ERROR if i % 3 == 0 else 0))
        span.attributes.extend([kv("client.address", value), kv("user_age", value), kv("geo", value),
                                kv("user.id", value), kv("reco.fallback", i % 2 == 0), kv("reco.num", i)])
    spans.add(trace_id=b"\x00" * 16, span_id=b"\x01" * 8, name="x", kind=Span.SPAN_KIND_CLIENT)
    return [request.SerializeToString()]


def seed_requests() -> list[bytes]:
    out = list(generate(requests=3, spans_per_request=6, seed=11).requests)
    out += [r.SerializeToString() for r in to_requests(all_spans(make_traces(5, 12, special_fraction=0.4)),
                                                       per_request=15)]
    out += [r.SerializeToString() for r in requests_for(make_recos(6, seed=3), batch=2)]
    out += odd_requests()
    return out


def write_corpus(directory: Path) -> int:
    """Writes every seed with every option byte; returns how many files."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for raw in seed_requests():
        for opt in OPTIONS:
            data = bytes([opt]) + raw
            (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
            n += 1
    return n


if __name__ == "__main__":
    for target in sys.argv[2:]:
        print(target, write_corpus(Path(sys.argv[1]) / target))
