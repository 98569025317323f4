"""SDK exporter → recohop (real process, pass-through) → downstream: everything arrives byte-identical."""

from __future__ import annotations

import pytest
from otlp_peers import wait_until
from sdk_clients import send_logs, send_metrics, send_spans

PASSTHROUGH = """
exporter:
  endpoint: {downstream}
  retry: {{initial_interval: 50ms}}
pipeline: []
"""


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_traces_metrics_logs_arrive_byte_identical(downstream, start_hop, gzip: bool) -> None:
    direct = type(downstream)().start()  # the same SDK calls made straight to a second sink, for comparison
    try:
        hop = start_hop(PASSTHROUGH.format(downstream=downstream.endpoint))
        sent_spans = send_spans(hop.endpoint, 300, gzip=gzip)
        for target in (hop.endpoint, direct.endpoint):
            send_metrics(target, gzip=gzip)
            send_logs(target, 20, gzip=gzip)
        wait_until(lambda: len(downstream.spans()) == 600 and len(resources(downstream, "logs")) == 20
                   and resources(downstream, "metrics"), "600 spans, 20 log resources and metrics",
                   seen=lambda: (len(downstream.spans()), len(resources(downstream, "logs")),
                                 len(resources(downstream, "metrics"))))
        assert sorted(s.SerializeToString() for s in downstream.spans()) == sorted(sent_spans)
        # Metrics and logs carry timestamps of their own run, so compare everything but the times. The hop may
        # join queued requests into one call, so compare the resource entries, not the request boundaries.
        for signal in ("metrics", "logs"):
            got, want = resources(downstream, signal), resources(direct, signal)
            assert sorted(strip_times(r) for r in got) == sorted(strip_times(r) for r in want)
    finally:
        direct.stop()


def resources(server, signal: str) -> list:
    field = {"metrics": "resource_metrics", "logs": "resource_logs"}[signal]
    return [entry for request in server.requests(signal) for entry in getattr(request, field)]


def strip_times(request):
    """The message with every *time_unix_nano field cleared (differs between two runs of the same calls)."""
    copy = type(request)()
    copy.CopyFrom(request)
    stack = [copy]
    while stack:
        message = stack.pop()
        for field, value in message.ListFields():
            if field.name.endswith("time_unix_nano"):
                message.ClearField(field.name)
            elif field.message_type is not None:
                if field.is_repeated:
                    stack.extend(v for v in value if hasattr(v, "ListFields"))
                else:
                    stack.append(value)
    return copy.SerializeToString(deterministic=True)
