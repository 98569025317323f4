"""The OpenTelemetry JS SDK's OTLP/HTTP exporters against the HTTP receiver: OTLP/JSON (what browsers and
exporter-trace-otlp-http send) and gzip-compressed protobuf (exporter-trace-otlp-proto, streamed by Node).
`tests/foundation/js/` holds the script and its package.json; the test installs it with npm into a temp dir,
and is skipped where node or npm is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from otlp_peers import CaptureServer

from processor.config import parse_config
from processor.config_node import Node
from processor.hop import Hop

JS_DIR = Path(__file__).parent / "js"
COUNT = 4

pytestmark = pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="node/npm not installed")


def test_js_sdk_json_and_protobuf_exporters_deliver(tmp_path: Path, downstream: CaptureServer) -> None:
    for name in ("package.json", "send.mjs"):
        shutil.copy(JS_DIR / name, tmp_path / name)
    install = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, f"npm install failed:\n{install.stdout[-2000:]}\n{install.stderr[-2000:]}"

    node = Node({"receiver": {"endpoint": "127.0.0.1:0", "http": {"endpoint": "127.0.0.1:0"}},
                 "exporter": {"endpoint": downstream.endpoint}, "telemetry": {"metrics_endpoint": "off"},
                 "pipeline": [{"type": "limits"}]}, "<js test>")
    hop = Hop(parse_config(node)).start()
    try:
        run = subprocess.run(["node", "send.mjs", f"http://{hop.http_endpoint}", str(COUNT)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        results = json.loads(run.stdout.strip().splitlines()[-1])
        assert results == {"json": [0] * COUNT, "proto": [0] * COUNT}  # ExportResultCode.SUCCESS each time
        downstream.wait_for_spans(2 * COUNT)
    finally:
        hop.stop(5)
    by_service: dict[str, list[str]] = {}
    for request in downstream.requests("traces"):
        for rs in request.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    assert len(span.trace_id) == 16 and len(span.span_id) == 8  # hex ids read as bytes
                    assert span.status.code == 2 and span.name == "reco.generate"
                    attributes = {a.key: a.value for a in span.attributes}
                    assert attributes["reco.num_results"].int_value in range(COUNT)
                    by_service.setdefault(service, []).append(attributes["reco.request_id"].string_value)
    assert sorted(by_service["js-json"]) == [f"json-{i}" for i in range(COUNT)]
    assert sorted(by_service["js-proto"]) == [f"proto-{i}" for i in range(COUNT)]
