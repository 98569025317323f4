"""Grafana datasource provisioning: Prometheus with exemplar links into the trace datasource.

Exemplar → trace links are a property of the Prometheus datasource in Grafana, not of a dashboard, so the
build writes this file next to the dashboards; the trace datasource uid (Tempo by default) is configurable.
"""

from __future__ import annotations

TRACE_TYPES = ("tempo", "jaeger")


def provisioning(trace_uid: str = "tempo", trace_type: str = "tempo", trace_id_label: str = "trace_id",
                 prometheus_url: str = "http://prometheus:9090", trace_url: str = "http://tempo:3200") -> dict:
    if trace_type not in TRACE_TYPES:
        raise ValueError(f"trace datasource type must be one of {', '.join(TRACE_TYPES)}, got {trace_type!r}")
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus", "type": "prometheus", "uid": "prometheus", "access": "proxy",
                "url": prometheus_url, "isDefault": True,
                "jsonData": {"exemplarTraceIdDestinations": [{"name": trace_id_label, "datasourceUid": trace_uid}]},
            },
            {"name": trace_type.capitalize(), "type": trace_type, "uid": trace_uid, "access": "proxy",
             "url": trace_url},
        ],
    }
