"""Every rendered otelcol template passes the real collector's own `otelcol validate --config` (the distribution of
collector-config/otelcol/builder.yaml), with the render parameters that change component settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from otelcol_fixture import otelcol_binary, validate

from processor import render

pytestmark = pytest.mark.slow

CASES: list[tuple[str, str, dict[str, str]]] = [
    ("agent", "otelcol-agent.yaml", {}),
    ("agent", "otelcol-agent.yaml", {"listen_host": "127.0.0.1", "agent_grpc_port": "14317", "agent_http_port": "14318",
                                     "gateway_host": "gw.example.internal", "gateway_otlp_port": "24317",
                                     "agent_memory_limit_mib": "128", "health_check_port": "23133",
                                     "collector_metrics_port": "28888"}),
    ("gateway", "otelcol-gateway.yaml", {"resolver": "dns"}),
    ("gateway", "otelcol-gateway.yaml", {"resolver": "dns", "namespace": "prod", "recohop_service": "hop",
                                         "recohop_otlp_port": "5317", "gateway_memory_limit_mib": "3000"}),
    ("gateway", "otelcol-gateway.yaml", {"resolver": "k8s", "namespace": "prod"}),
    ("gateway", "otelcol-gateway.yaml", {"resolver": "static",
                                         "recohop_hosts": "127.0.0.1:5317,127.0.0.1:6317,127.0.0.1:7317"}),
    ("backend", "otelcol-backend.yaml", {}),
    ("backend", "otelcol-backend.yaml", {"trace_backend_endpoint": "jaeger:4317",
                                         "remote_write_url": "http://mimir:9009/api/v1/push",
                                         "logs_backend_url": "http://loki:3100/otlp", "backend_otlp_port": "34317"}),
    ("backend", "otelcol-backend.yaml", {"backend_exporter": "file", "backend_file_dir": "/tmp/recohop-backend"}),
]


@pytest.mark.parametrize(("profile", "name", "overrides"), CASES,
                         ids=[f"{p}-{'-'.join(f'{k}={v}' for k, v in o.items())[:60] or 'defaults'}"
                              for p, _, o in CASES])
def test_rendered_template_passes_otelcol_validate(tmp_path: Path, profile: str, name: str,
                                                   overrides: dict[str, str]) -> None:
    binary = otelcol_binary()
    config = tmp_path / name
    config.write_text(render.render(profile, overrides)[name])
    result = validate(binary, config)
    assert result.returncode == 0, f"otelcol rejects the rendered {profile} config:\n{result.stderr[-3000:]}"


def test_validate_catches_a_template_drifting_from_the_collector(tmp_path: Path) -> None:
    """The check has teeth: a setting the collector does not know, and a wrong value type, both fail."""
    binary = otelcol_binary()
    for mutate in (lambda cfg: cfg["processors"]["batch"].update(send_batch_sise=10),
                   lambda cfg: cfg["exporters"]["loadbalancing/traces"].update(routing_key="traceId-typo"),
                   lambda cfg: cfg["processors"]["memory_limiter"].update(check_interval="often")):
        cfg = yaml.safe_load(render.render("gateway", {"resolver": "dns"})["otelcol-gateway.yaml"])
        mutate(cfg)
        config = tmp_path / "drifted.yaml"
        config.write_text(yaml.safe_dump(cfg))
        assert validate(binary, config).returncode != 0, cfg
