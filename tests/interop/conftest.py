"""Fixtures of the otelcol interop tests: the built collector, collectors started per test and stopped by their own
process at teardown, and wire taps. Request them after `downstream` and `start_hop` so teardown runs in reverse:
collectors stop (their queues drain into the hop) before the taps, the hops and the capture server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # interop helpers, whatever the rootdir

from interop_peers import GrpcWireTap  # noqa: E402
from otelcol_fixture import OtelcolProcess, otelcol_binary, start_otelcol  # noqa: E402


@pytest.fixture(scope="session")
def otelcol_bin() -> Path:
    return otelcol_binary()


@pytest.fixture
def start_collector(otelcol_bin: Path, tmp_path: Path) -> Iterator[Callable[..., OtelcolProcess]]:
    """`start_collector(config_text, health_port, name)` → a running otelcol, stopped (SIGTERM, then SIGKILL) at
    teardown; its log stays in tmp_path/<name>/ for the failure report."""
    started: list[OtelcolProcess] = []

    def start(config_text: str, health_port: int, name: str) -> OtelcolProcess:
        collector = start_otelcol(otelcol_bin, config_text, tmp_path / name, health_port, name)
        started.append(collector)
        return collector

    yield start
    for collector in reversed(started):
        collector.stop()


@pytest.fixture
def wire_tap() -> Iterator[Callable[[str], GrpcWireTap]]:
    """`wire_tap("host:port")` → a started GrpcWireTap in front of that server, stopped at teardown."""
    taps: list[GrpcWireTap] = []

    def tap(target: str) -> GrpcWireTap:
        started = GrpcWireTap(target).start()
        taps.append(started)
        return started

    yield tap
    for started in taps:
        started.stop()

