"""Derived metrics on the hop's /metrics: a prometheus_client collector reading the deriver's snapshot.

Histogram buckets carry exemplars (trace_id, span_id) of kept traces; prometheus_client writes them only in
the OpenMetrics format, which Prometheus asks for by default (store them with
`--enable-feature=exemplar-storage`).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar
from prometheus_client.utils import floatToGoString

from processor.redaction.labels import redact_labels
from processor.spanmetrics.aggregate import MetricSnapshot
from processor.spanmetrics.derive import Deriver


def to_prometheus(snapshot: MetricSnapshot) -> Metric:
    if snapshot.kind == "counter":
        family = Metric(snapshot.name.removesuffix("_total"), snapshot.help, "counter")
        for point in snapshot.points:
            family.add_sample(snapshot.name, redact_labels(point.labels), point.value)
        return family
    family = Metric(snapshot.name, snapshot.help, "histogram")
    les = [floatToGoString(b) for b in snapshot.bounds] + ["+Inf"]
    for point in snapshot.points:
        labels = redact_labels(point.labels)  # span names and attribute values: no PII on /metrics
        cumulative = 0
        for i, count in enumerate(point.buckets):
            cumulative += count
            ex = point.exemplars.get(i)
            exemplar = None if ex is None else PromExemplar(
                {"trace_id": ex.trace_id.hex(), "span_id": ex.span_id.hex()}, ex.value, ex.time_unix_nano / 1e9)
            family.add_sample(snapshot.name + "_bucket", {**labels, "le": les[i]}, cumulative,
                              exemplar=exemplar)
        family.add_sample(snapshot.name + "_count", labels, cumulative)
        family.add_sample(snapshot.name + "_sum", labels, point.value)
    return family


class DerivedCollector(Collector):
    """Registered into `ctx.registry`; each scrape reads one consistent snapshot."""

    def __init__(self, deriver: Deriver) -> None:
        self.deriver = deriver

    def describe(self) -> Iterable[Metric]:
        return []  # names depend on the rules file; don't make the registry collect at registration

    def collect(self) -> Iterable[Metric]:
        for snapshot in self.deriver.snapshot():
            yield to_prometheus(snapshot)
