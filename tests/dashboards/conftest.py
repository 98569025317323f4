"""A real Prometheus (Debian /usr/bin/prometheus) scraping synthetic contract series, with the built rules loaded."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_series import SyntheticContract  # noqa: E402

from dashboards import build  # noqa: E402
from processor.localprom import prometheus_binary, start_prometheus  # noqa: E402


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a Prometheus that has scraped the synthetic series and evaluated the recording rules."""
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
        # Ready once a recorded ratio over two scrapes exists.
        prom.wait_for("placement:reco_ctr:ratio5m", lambda result: len(result) == 4)
        if len(prom.query("placement:reco_ctr:ratio5m")) != 4:
            pytest.fail("Prometheus did not evaluate the recording rules in 30 s:\n" + prom.log()[-2000:])
        time.sleep(1.5)  # a few more scrapes: every rate window holds several samples
        yield prom.url
    finally:
        prom.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
