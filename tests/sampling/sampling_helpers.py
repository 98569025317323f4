"""Helpers for the sampling tests: a stage on a test-driven clock, and span/log accounting of its output."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from processor.config_node import Node
from processor.stages.base import Emitted, StageContext, as_trace_message
from processor.stages.tail_sampling import TailSampling, build

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICIES = REPO / "collector-config" / "policies" / "default.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A real TailSampling stage; everything it sends on is collected in `traces` / `logs`."""

    def __init__(self, policies: Path = DEFAULT_POLICIES, **config: Any) -> None:
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.ctx = StageContext(registry=self.registry, clock=self.clock)
        self.decisions: list[tuple[bytes, bool, str]] = []
        self.ctx.decisions.subscribe(lambda tid, kept, policy: self.decisions.append((tid, kept, policy)))
        stage = build(Node({"policies": str(policies), **config}, "<test>"), self.ctx)
        assert isinstance(stage, TailSampling)
        self.stage = stage
        self.traces: list[Any] = []
        self.logs: list[Any] = []

    def send(self, request: Any) -> list[Any]:
        out = self.stage.on_traces(request)
        self.traces.extend(out)
        return out

    def send_logs(self, request: Any) -> list[Any]:
        out = self.stage.on_logs(request)
        self.logs.extend(out)
        return out

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Move the clock, flushing every `step` like the pipeline timer does."""
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = min(end, self.clock.now + step)
            self._take(self.stage.flush(self.clock.now))

    def shutdown(self) -> None:
        self._take(self.stage.shutdown())

    def _take(self, emitted: Emitted | None) -> None:
        if emitted:
            self.traces.extend(as_trace_message(t) for t in emitted.traces)
            self.logs.extend(emitted.logs)

    def out_spans(self) -> list[Any]:
        return [s for r in self.traces for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def out_span_counts(self) -> Counter[bytes]:
        return Counter(s.trace_id for s in self.out_spans())

    def out_logs(self) -> list[Any]:
        return [lr for r in self.logs for rl in r.resource_logs for sl in rl.scope_logs for lr in sl.log_records]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def attributes(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out
