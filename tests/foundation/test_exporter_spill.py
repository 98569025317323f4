"""A long downstream outage with a disk queue: a 64 KiB memory queue overflows to a 3 MiB disk queue; every
accepted span arrives in order and byte-identical once the next hop is back, sends beyond memory + disk are
refused (RESOURCE_EXHAUSTED) and counted; after kill -9 a restarted hop delivers what was on disk."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import grpc
import pytest
from otlp_peers import wait_until
from test_exporter_outage import metric_value

from processor.config import ConfigError, load_config
from processor.signals import METHOD_PATHS, REQUEST_TYPES

SPILL_CONFIG = """
exporter:
  endpoint: {downstream}
  timeout: 2s
  queue: {{max_bytes: 64KiB, consumers: 1, send_batch_max_bytes: 256KiB}}
  retry: {{initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 5m}}
  spill: {{dir: {spill_dir}, max_bytes: 3MiB, fsync: interval}}
shutdown_timeout: 3s
pipeline: []
"""
SPANS_PER_REQUEST = 50
MEMORY_BUDGET = 64 * 1024
DISK_BUDGET = 3 * 1024 * 1024


def trace_request(index: int) -> tuple[bytes, list[bytes]]:
    """One ~12 KiB export request of distinct spans; returns it and its spans serialized."""
    request = REQUEST_TYPES["traces"]()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "spill-test"
    scope = resource_spans.scope_spans.add()
    for n in range(SPANS_PER_REQUEST):
        span = scope.spans.add()
        serial = index * SPANS_PER_REQUEST + n
        span.trace_id = serial.to_bytes(16, "big")
        span.span_id = (serial + 1).to_bytes(8, "big")
        span.name = f"reco.generate-{serial}"
        span.attributes.add(key="reco.request_id").value.string_value = f"req-{serial}-" + "p" * 180
    return request.SerializeToString(), [s.SerializeToString() for s in scope.spans]


def send_until_refused(endpoint: str, requests: int, refused_after_first: int = 30,
                       ) -> tuple[list[bytes], list[int], list[grpc.RpcError]]:
    """Export requests one by one; returns the accepted requests' spans (in order), their sizes, and the
    refusals. Stops `refused_after_first` requests after the first refusal."""
    accepted: list[bytes] = []
    sizes: list[int] = []
    refusals: list[grpc.RpcError] = []
    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(METHOD_PATHS["traces"])
        for i in range(requests):
            payload, spans = trace_request(i)
            try:
                export(payload, timeout=10)
            except grpc.RpcError as error:
                refusals.append(error)
                if len(refusals) >= refused_after_first:
                    break
                continue
            assert not refusals, "a request was accepted after a refusal while nothing drained"
            accepted += spans
            sizes.append(len(payload))
    return accepted, sizes, refusals


def test_long_outage_spills_to_disk_and_delivers_everything_in_order(downstream, start_hop,
                                                                    tmp_path: Path) -> None:
    down = threading.Event()
    down.set()
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE if down.is_set() else None
    spill_dir = tmp_path / "spill"
    hop = start_hop(SPILL_CONFIG.format(downstream=downstream.endpoint, spill_dir=spill_dir))
    outage_started = time.monotonic()

    accepted, sizes, refusals = send_until_refused(hop.endpoint, 400)
    accepted_bytes = sum(sizes)
    assert accepted_bytes > 20 * MEMORY_BUDGET  # far more than memory holds went somewhere: the disk
    assert DISK_BUDGET <= accepted_bytes <= MEMORY_BUDGET + DISK_BUDGET + 2 * max(sizes)
    assert refusals and {e.code() for e in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all("google.rpc.retryinfo-bin" in dict(e.trailing_metadata()) for e in refusals)
    assert metric_value(hop.metrics_url, 'recohop_refused_requests_total{signal="spans"}') == len(refusals)
    written = metric_value(hop.metrics_url, 'recohop_spill_records_total{op="written"}')
    assert written > 0 and metric_value(hop.metrics_url, "recohop_spill_bytes ") > DISK_BUDGET * 0.9
    assert metric_value(hop.metrics_url, "recohop_spill_capacity_bytes ") == DISK_BUDGET
    files = list(spill_dir.iterdir())
    assert files and {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}
    assert stat.S_IMODE(spill_dir.stat().st_mode) == 0o700
    assert downstream.spans() == []

    time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))  # the next hop stays down ~30 s
    down.clear()
    wait_until(lambda: len(downstream.spans()) >= len(accepted), f"{len(accepted)} accepted spans delivered",
               timeout=60, seen=lambda: len(downstream.spans()))
    received = [span.SerializeToString() for span in downstream.spans()]
    assert received == accepted  # all of them, once each, in the order they were accepted, byte-identical
    wait_until(lambda: metric_value(hop.metrics_url, "recohop_spill_bytes ") == 0, "an empty disk queue",
               seen=lambda: metric_value(hop.metrics_url, "recohop_spill_bytes "))
    assert metric_value(hop.metrics_url, 'recohop_spill_records_total{op="delivered"}') == written
    assert metric_value(hop.metrics_url, "recohop_export_failed_items_total") == 0
    assert list(spill_dir.glob("*.seg")) == []


def test_kill_9_during_outage_then_restart_delivers_what_was_on_disk(downstream, start_hop,
                                                                    tmp_path: Path) -> None:
    down = threading.Event()
    down.set()
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE if down.is_set() else None
    spill_dir = tmp_path / "spill"
    config = SPILL_CONFIG.format(downstream=downstream.endpoint, spill_dir=spill_dir)
    hop = start_hop(config)
    accepted, sizes, refusals = send_until_refused(hop.endpoint, 120)
    assert not refusals and sum(sizes) > 10 * MEMORY_BUDGET
    written = metric_value(hop.metrics_url, 'recohop_spill_records_total{op="written"}')
    assert written > 0
    hop.proc.kill()  # kill -9: what was in memory is gone, what was on disk must survive
    hop.proc.wait(10)

    down.clear()
    restarted = start_hop(config)
    wait_until(lambda: metric_value(restarted.metrics_url, "recohop_spill_bytes ") == 0,
               "an empty disk queue after the restart", timeout=60,
               seen=lambda: metric_value(restarted.metrics_url, "recohop_spill_bytes "))
    received = [span.SerializeToString() for span in downstream.spans()]
    # Exactly the spilled requests: a suffix of what was accepted, in order, byte-identical; the lost prefix
    # is what the memory queue held (at most its budget plus the one request that crossed it).
    assert received and received == accepted[len(accepted) - len(received):]
    lost_requests = (len(accepted) - len(received)) // SPANS_PER_REQUEST
    assert sum(sizes[:lost_requests]) <= MEMORY_BUDGET + max(sizes)
    assert len(received) // SPANS_PER_REQUEST == written
    assert metric_value(restarted.metrics_url, 'recohop_spill_records_total{op="delivered"}') == written
    assert metric_value(restarted.metrics_url, 'recohop_spill_records_total{op="corrupt"}') == 0


def test_sigterm_during_outage_keeps_memory_on_disk_for_the_next_start(downstream, start_hop,
                                                                      tmp_path: Path) -> None:
    down = threading.Event()
    down.set()
    downstream.fail_with = lambda _signal: grpc.StatusCode.UNAVAILABLE if down.is_set() else None
    config = SPILL_CONFIG.format(downstream=downstream.endpoint, spill_dir=tmp_path / "spill")
    hop = start_hop(config)
    accepted, sizes, refusals = send_until_refused(hop.endpoint, 40)
    assert not refusals and sum(sizes) > 4 * MEMORY_BUDGET
    assert hop.terminate() == 0  # the shutdown deadline passes with the next hop still down
    assert "kept in the disk queue" in hop.log()

    down.clear()
    restarted = start_hop(config)
    wait_until(lambda: len(downstream.spans()) >= len(accepted), f"{len(accepted)} accepted spans delivered",
               timeout=30, seen=lambda: len(downstream.spans()))
    wait_until(lambda: metric_value(restarted.metrics_url, "recohop_spill_bytes ") == 0,
               "an empty disk queue after the restart",
               seen=lambda: metric_value(restarted.metrics_url, "recohop_spill_bytes "))
    received = [span.SerializeToString() for span in downstream.spans()]
    # Nothing lost and nothing twice; what memory held at shutdown follows the older spilled data.
    assert sorted(received) == sorted(accepted)
    assert metric_value(restarted.metrics_url, "recohop_export_failed_items_total") == 0


def test_spill_config_errors_name_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "hop.yaml"
    for spill, key, expected in [("{max_bytes: 1GiB}", "exporter.spill.dir", "directory"),
                                 (f"{{dir: {tmp_path}, fsync: sometimes}}", "exporter.spill.fsync", "always"),
                                 (f"{{dir: {tmp_path}, max_bytes: lots}}", "exporter.spill.max_bytes", "size"),
                                 (f"{{dir: {config}}}", "exporter.spill.dir", "directory")]:
        config.write_text(f"exporter:\n  spill: {spill}\npipeline: []\n")
        with pytest.raises(ConfigError) as error:
            load_config(config)
        assert error.value.file == str(config) and error.value.key == key and expected in error.value.expected
    config.write_text(f"exporter:\n  spill: {{dir: {tmp_path / 'q'}}}\npipeline: []\n")
    spill = load_config(config).exporter.spill
    assert spill is not None and spill.max_bytes == 1024**3 and spill.fsync == "interval"
