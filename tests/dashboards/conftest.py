"""A real Prometheus (Debian /usr/bin/prometheus) scraping synthetic contract series, with the built rules loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_series import SyntheticContract  # noqa: E402

from dashboards import build  # noqa: E402

PROMETHEUS = "/usr/bin/prometheus"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a Prometheus that has scraped the synthetic series and evaluated the recording rules."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("Debian prometheus not installed")
    work = tmp_path_factory.mktemp("prometheus")
    registry = CollectorRegistry()
    registry.register(SyntheticContract())
    exporter_port = _free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    rules = build.render()
    for name in ("recording.rules.yml", "alerts.rules.yml"):
        (work / name).write_text(rules[name])
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [recording.rules.yml, alerts.rules.yml]\n"
        "scrape_configs:\n"
        f"  - job_name: recohop\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n")
    port = _free_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # ready once a recorded ratio over two scrapes exists
            body = _get(f"{url}/api/v1/query?query=placement:reco_ctr:ratio5m")
            if body and len(body["data"]["result"]) == 4:
                break
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
            time.sleep(0.25)
        else:
            pytest.fail("Prometheus did not evaluate the recording rules in 30 s")
        time.sleep(1.5)  # a few more scrapes: every rate window holds several samples
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        shutil.rmtree(work / "data", ignore_errors=True)
