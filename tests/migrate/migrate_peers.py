"""Helpers for the otelcol-vs-recohop migration tests: feed a collector over OTLP gRPC, read its own metrics,
reproduce its probabilistic policy's hash, and run `recohop replay` in process while keeping its decisions."""

from __future__ import annotations

import contextlib
import io
import re
import urllib.request
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import grpc
import pytest

from processor.cli import main
from processor.commands import replay

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def send_traces(endpoint: str, requests: Iterable[bytes]) -> None:
    """Each serialized ExportTraceServiceRequest as one OTLP gRPC Export call (the SDK's batches, as sent)."""
    with grpc.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(TRACE_EXPORT)
        for raw in requests:
            export(raw, timeout=30)


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text page: (name, labels, value)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def otelcol_probabilistic(trace_ids: Iterable[bytes], percentage: float, salt: str = "default-hash-seed") -> set[bytes]:
    """The trace ids otelcol v0.158's probabilistic policy samples: FNV-1a 64 of salt + trace id, at most
    MaxUint64 * ratio (its `calculateThreshold`; the product is exact here, big.Float rounds to 64 bits, which
    only matters for a hash within a few units of the threshold)."""
    threshold = int(Fraction(2**64 - 1) * Fraction(percentage / 100))
    kept = set()
    for trace_id in trace_ids:
        h = 0xCBF29CE484222325
        for byte in salt.encode() + trace_id:
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        if h <= threshold:
            kept.add(trace_id)
    return kept


def write_capture(path: Path, requests: Iterable[bytes]) -> None:
    """Length-delimited binary ExportTraceServiceRequests (varint length, then the message): `replay` reads it."""
    with open(path, "wb") as out:
        for raw in requests:
            size = len(raw)
            while True:
                byte = size & 0x7F
                size >>= 7
                out.write(bytes([byte | (0x80 if size else 0)]))
                if not size:
                    break
            out.write(raw)


def run_replay(policies: Path, capture: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[bytes, tuple[bool, str]]]:
    """`recohop replay --policies FILE CAPTURE` through the CLI, in process; returns its report and every decision
    (trace id -> (kept, policy)) its tail-sampling stage published."""
    decided: dict[bytes, tuple[bool, str]] = {}
    real_build = replay.build

    def build_and_listen(node, ctx):  # noqa: ANN001, ANN202 - the stage builder's signature
        stage = real_build(node, ctx)
        ctx.decisions.subscribe(lambda tid, kept, policy: decided.__setitem__(tid, (kept, policy)))
        return stage

    monkeypatch.setattr(replay, "build", build_and_listen)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["replay", "--policies", str(policies), str(capture)])
    assert code == 0, out.getvalue()
    return out.getvalue(), decided


def run_cli(*argv: str) -> tuple[int, str]:
    """`recohop ARGV...` in process: (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()
