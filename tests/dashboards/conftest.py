"""A real Prometheus (Debian /usr/bin/prometheus) scraping synthetic contract series, with the built rules loaded."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_series import SyntheticContract  # noqa: E402

from dashboards import build  # noqa: E402
from dashboards.recording import PLACEMENT_CTR  # noqa: E402
from processor.localprom import prometheus_binary, start_prometheus  # noqa: E402


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a Prometheus that has scraped the synthetic series and evaluated the recording rules.

    Module scope: the process ends with the module that asked for it, so no later test shares the cores
    with a Prometheus it did not start."""
    if prometheus_binary() is None:
        pytest.skip("Debian prometheus not installed")
    work = tmp_path_factory.mktemp("prometheus")
    registry = CollectorRegistry()
    registry.register(SyntheticContract())
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    build.write(work / "rules")
    prom = start_prometheus([f"127.0.0.1:{server.server_port}"], work,
                            rule_files=[work / "rules" / "recording.rules.yml", work / "rules" / "alerts.rules.yml"])
    try:
        # Ready once the recorded CTR of every placement has been evaluated three times: every rate window
        # then holds several samples.
        prom.wait_for(f"count_over_time({PLACEMENT_CTR}[5m]) >= 3", lambda result: len(result) == 4,
                      what="three evaluations of the recorded CTR of 4 placements")
        yield prom.url
    finally:
        prom.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
