"""The agent -> gateway leg run for real, with rotel as a stand-in for otelcol: two rotel-agent processes on
the ports the rendered agent and gateway configs name, spans from the OTel SDK, a capture server behind."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from otlp_peers import CaptureServer, free_port
from rotel_fixture import start_rotel

from processor import render


def _send_recommendations(endpoint: str, requests: int) -> dict[str, set[str]]:
    """`requests` recommendation traces (root + 3 children) through the SDK; trace id -> span names sent."""
    provider = TracerProvider(resource=Resource.create({"service.name": "recommendation-service"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://{endpoint}", insecure=True),
                                                   schedule_delay_millis=50))
    tracer = provider.get_tracer("collector-config-test")
    sent: dict[str, set[str]] = {}
    for i in range(requests):
        with tracer.start_as_current_span("reco.generate", kind=SpanKind.SERVER,
                                          attributes={"reco.placement": "home", "reco.request_id": f"r{i}"}) as root:
            for child in ("reco.fetch_user_history", "reco.fetch_candidates", "reco.score_candidates"):
                with tracer.start_as_current_span(child):
                    pass
            if i % 5 == 0:
                root.set_status(Status(StatusCode.ERROR))
            sent[format(root.get_span_context().trace_id, "032x")] = {
                "reco.generate", "reco.fetch_user_history", "reco.fetch_candidates", "reco.score_candidates"}
    assert provider.force_flush(10_000)
    provider.shutdown()
    return sent


def _received(capture: CaptureServer) -> dict[str, set[str]]:
    got: dict[str, set[str]] = {}
    for span in capture.spans():
        got.setdefault(span.trace_id.hex(), set()).add(span.name)
    return got


def test_sdk_through_rendered_agent_and_gateway_ports(tmp_path: Path) -> None:
    gateway_port = free_port()
    agent_port = free_port()
    files = render.render_all({"listen_host": "127.0.0.1", "gateway_host": "127.0.0.1",
                               "gateway_otlp_port": str(gateway_port), "agent_grpc_port": str(agent_port),
                               "agent_http_port": str(free_port())})
    agent_cfg = yaml.safe_load(files["agent/otelcol-agent.yaml"])
    gateway_cfg = yaml.safe_load(files["gateway/otelcol-gateway.yaml"])
    gateway_listen = gateway_cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    agent_listen = agent_cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    agent_forward = agent_cfg["exporters"]["otlp/gateway"]["endpoint"]

    capture = CaptureServer().start()
    gateway = agent = None
    try:
        # The gateway stand-in listens where the rendered gateway listens; the agent stand-in listens where the
        # rendered agent listens and forwards where the rendered agent's exporter points.
        gateway = start_rotel(capture.endpoint, tmp_path / "gateway",
                              grpc_port=int(gateway_listen.rsplit(":", 1)[1]))
        agent = start_rotel(agent_forward, tmp_path / "agent", grpc_port=int(agent_listen.rsplit(":", 1)[1]))
        sent = _send_recommendations(agent.grpc_endpoint, requests=20)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _received(capture) != sent:
            time.sleep(0.05)
        got = _received(capture)
        assert got == sent, f"{len(got)}/{len(sent)} traces arrived; agent log:\n{agent.log()[-1500:]}"
        # Error status survives both hops (tail sampling downstream depends on it).
        errors = {s.trace_id.hex() for s in capture.spans() if s.name == "reco.generate" and s.status.code == 2}
        assert len(errors) == 4
    finally:
        for proc in (agent, gateway):
            if proc is not None:
                proc.stop()
        capture.stop()
    assert agent.proc.returncode is not None and gateway.proc.returncode is not None


def test_start_rotel_reports_a_port_already_taken(tmp_path: Path) -> None:
    """A rotel that cannot listen fails fast with its log, and leaves no process behind."""
    capture = CaptureServer().start()
    try:
        first = start_rotel(capture.endpoint, tmp_path / "first")
        try:
            try:
                start_rotel(capture.endpoint, tmp_path / "second", grpc_port=first.grpc_port, timeout=5)
            except RuntimeError as exc:
                message = str(exc)
            else:
                raise AssertionError("a second rotel on the same port must not start")
            assert "rotel-agent" in message and f"127.0.0.1:{first.grpc_port} is already in use" in message
        finally:
            first.stop()
    finally:
        capture.stop()


def test_start_rotel_reports_an_early_exit_with_its_log(tmp_path: Path) -> None:
    try:
        start_rotel("127.0.0.1:1", tmp_path, timeout=5, extra_args=["--no-such-flag"])
    except RuntimeError as exc:
        message = str(exc)
    else:
        raise AssertionError("rotel-agent with a bad flag must not be reported as started")
    assert "rotel-agent exited with" in message
    assert "--no-such-flag" in message, "the error carries rotel's own complaint"
