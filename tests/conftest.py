"""Shared fixtures: a real downstream OTLP server and real hop processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers importable by every test area

from otlp_peers import CaptureServer, HopProcess, start_hop_process  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def environment_unchanged_by_the_module() -> Iterator[None]:
    """A module that leaves an environment variable behind changes what later modules test (e.g. a pseudonym key
    that turns off the zero-config default's warning), and which modules follow depends on the order and on the
    worker a module runs in. Restore the environment and fail the module, naming the variables (not values)."""
    before = dict(os.environ)
    yield
    changed = sorted(k for k in before.keys() | os.environ.keys()
                     if before.get(k) != os.environ.get(k) and k != "PYTEST_CURRENT_TEST")  # pytest's own
    for key in changed:
        if key in before:
            os.environ[key] = before[key]
        else:
            del os.environ[key]
    if changed:
        pytest.fail(f"this module left environment variables changed: {', '.join(changed)}")


@pytest.fixture
def downstream() -> Iterator[CaptureServer]:
    server = CaptureServer().start()
    yield server
    server.stop()


@pytest.fixture
def start_hop(tmp_path: Path, downstream: CaptureServer) -> Iterator[Callable[..., HopProcess]]:
    """`start_hop(yaml_text_or_None, extra_args=[...], env={...})` → a running `recohop serve` process.

    Depends on `downstream` so the capture server outlives the hops (their shutdown flushes into it)."""
    started: list[HopProcess] = []

    def start(config_text: str | None, extra_args: list[str] | None = None,
              env: dict[str, str] | None = None, name: str = "hop") -> HopProcess:
        hop = start_hop_process(config_text, tmp_path / f"{name}{len(started)}", extra_args, env)
        started.append(hop)
        return hop

    yield start
    for hop in started:
        hop.terminate()
