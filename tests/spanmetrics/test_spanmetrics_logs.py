"""Log records are counted by service and severity on 100 % of logs, before sampling."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from processor.config_node import Node
from processor.signals import REQUEST_TYPES
from processor.stages.base import StageContext
from processor.stages.spanmetrics import build


def logs_request(service: str, severities: list[int]):  # noqa: ANN201
    request = REQUEST_TYPES["logs"]()
    rl = request.resource_logs.add()
    attr = rl.resource.attributes.add(key="service.name")
    attr.value.string_value = service
    records = rl.scope_logs.add().log_records
    for number in severities:
        records.add(severity_number=number).body.string_value = "x"
    return request


def test_log_records_counted_by_service_and_severity() -> None:
    registry = CollectorRegistry()
    stage = build(Node({"red": True}, "<test>"), StageContext(registry=registry))
    request = logs_request("recommendation-service", [9, 9, 10, 17, 17, 17, 21, 0])
    assert stage.on_logs(request) == [request]  # passes the request on untouched
    stage.on_logs(logs_request("frontend", [13]))
    counts = {(s.labels["service_name"], s.labels["severity"]): s.value for f in registry.collect()
              for s in f.samples if s.name == "traces_span_metrics_log_records_total"}
    assert counts == {("recommendation-service", "INFO"): 3, ("recommendation-service", "ERROR"): 3,
                      ("recommendation-service", "FATAL"): 1, ("recommendation-service", "UNSPECIFIED"): 1,
                      ("frontend", "WARN"): 1}
