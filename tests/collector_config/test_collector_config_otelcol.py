"""The rendered otelcol configs are wired correctly and their endpoints line up along the chain
agent -> gateway -> N x recohop -> backend; the Prometheus scrape config passes promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from otelcol_structure import exporter_endpoint, grpc_receiver_port, loadbalancing_targets, otelcol_problems

from processor import render

OTELCOL_FILES = [("agent", "otelcol-agent.yaml"), ("gateway", "otelcol-gateway.yaml"),
                 ("backend", "otelcol-backend.yaml")]
RESOLVERS = [{"resolver": "dns"}, {"resolver": "k8s"},
             {"resolver": "static", "recohop_hosts": "recohop-0:4317,recohop-1:4317"}]
PROMTOOL = Path("/usr/bin/promtool")


def _load(profile: str, name: str, overrides: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(render.render(profile, overrides or {})[name])


@pytest.mark.parametrize(("profile", "name"), OTELCOL_FILES)
def test_otelcol_config_wiring(profile: str, name: str) -> None:
    assert otelcol_problems(_load(profile, name)) == []


@pytest.mark.parametrize("overrides", RESOLVERS, ids=lambda o: o["resolver"])
def test_gateway_wiring_with_every_resolver(overrides: dict[str, str]) -> None:
    assert otelcol_problems(_load("gateway", "otelcol-gateway.yaml", overrides)) == []


def test_structure_checker_catches_broken_wiring() -> None:
    """The checker itself finds each kind of mistake (so a passing check means something)."""
    cfg = _load("agent", "otelcol-agent.yaml")
    cfg["service"]["pipelines"]["traces"]["exporters"] = ["otlp/typo"]
    cfg["processors"]["unused"] = {}
    cfg["service"]["pipelines"]["logs"]["processors"] = ["batch", "memory_limiter"]
    problems = otelcol_problems(cfg)
    assert "pipeline 'traces': exporter 'otlp/typo' is not defined under exporters" in problems
    assert "processors: 'unused' is defined but used by no pipeline" in problems
    assert "pipeline 'logs': memory_limiter must be the first processor" in problems


@pytest.mark.parametrize("ports", [{}, {"gateway_otlp_port": "14317", "recohop_otlp_port": "24317",
                                       "backend_otlp_port": "34317", "recohop_metrics_port": "19464"}],
                         ids=["defaults", "custom-ports"])
@pytest.mark.parametrize("resolver", RESOLVERS, ids=lambda o: o["resolver"])
def test_endpoints_line_up_along_the_chain(ports: dict[str, str], resolver: dict[str, str]) -> None:
    overrides = dict(ports)
    if resolver["resolver"] == "static":
        port = ports.get("recohop_otlp_port", "4317")
        resolver = {"resolver": "static", "recohop_hosts": f"recohop-0:{port},recohop-1:{port}"}
    files = render.render_all({**overrides, **resolver})
    agent = yaml.safe_load(files["agent/otelcol-agent.yaml"])
    gateway = yaml.safe_load(files["gateway/otelcol-gateway.yaml"])
    hop = yaml.safe_load(files["recohop/recohop.yaml"])
    backend = yaml.safe_load(files["backend/otelcol-backend.yaml"])
    prom = yaml.safe_load(files["backend/prometheus.yml"])

    # agent -> gateway
    host, port = exporter_endpoint(agent, "otlp/gateway").rsplit(":", 1)
    assert host == render.PARAMETERS["gateway_host"].default
    assert int(port) == grpc_receiver_port(gateway)
    # gateway -> every recohop instance, for traces, logs and metrics alike
    hop_port = int(hop["receiver"]["endpoint"].rsplit(":", 1)[1])
    lb = {cid: c for cid, c in gateway["exporters"].items() if cid.startswith("loadbalancing")}
    assert set(lb) == {"loadbalancing/traces", "loadbalancing/logs", "loadbalancing/metrics"}
    for cid, exporter in lb.items():
        kind, target_ports = loadbalancing_targets(exporter)
        assert kind == resolver["resolver"], cid
        assert target_ports and set(target_ports) == {hop_port}, cid
    assert lb["loadbalancing/traces"]["routing_key"] == "traceID"
    assert lb["loadbalancing/logs"]["routing_key"] == "traceID"
    # recohop -> backend
    host, port = hop["exporter"]["endpoint"].rsplit(":", 1)
    assert host == render.PARAMETERS["backend_host"].default
    assert int(port) == grpc_receiver_port(backend)
    # Prometheus scrapes every recohop instance's /metrics
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "recohop")
    sd = job["dns_sd_configs"][0]
    assert sd["port"] == int(hop["telemetry"]["metrics_endpoint"].rsplit(":", 1)[1])
    if resolver["resolver"] == "dns":
        assert sd["names"] == [lb["loadbalancing/traces"]["resolver"]["dns"]["hostname"]]


def test_gateway_dns_name_is_the_headless_service() -> None:
    files = render.render_all({"namespace": "obs", "recohop_service": "hop"})
    gateway = yaml.safe_load(files["gateway/otelcol-gateway.yaml"])
    service = yaml.safe_load(files["kubernetes/service.yaml"])
    assert service["spec"]["clusterIP"] == "None"
    name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert gateway["exporters"]["loadbalancing/traces"]["resolver"]["dns"]["hostname"] == name


@pytest.mark.skipif(not PROMTOOL.exists(), reason="promtool not installed")
@pytest.mark.parametrize("overrides", [{}, {"scrape_interval": "30s", "recohop_metrics_port": "19464"}])
def test_prometheus_scrape_config_passes_promtool(tmp_path: Path, overrides: dict[str, str]) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(render.render("backend", overrides)["prometheus.yml"])
    result = subprocess.run([str(PROMTOOL), "check", "config", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.skipif(not PROMTOOL.exists(), reason="promtool not installed")
def test_promtool_rejects_a_broken_scrape_config(tmp_path: Path) -> None:
    """promtool really checks: the same file with a bad interval fails."""
    path = tmp_path / "prometheus.yml"
    path.write_text(render.render("backend")["prometheus.yml"].replace("scrape_interval: 15s", "scrape_interval: 15"))
    result = subprocess.run([str(PROMTOOL), "check", "config", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
