"""`Stage.prepare_trace_bytes` in the pipeline (`processor/pipeline.py`): called with the very bytes the stage's
`on_trace_bytes` then gets, on the same thread, before the stage's lock is taken (so a walk without the GIL
overlaps the other requests), and only for stages that define it."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from processor.pipeline import Pipeline
from processor.stages.base import Emitted, Stage, StageContext, TracesRequest


def request_bytes(name: str) -> bytes:
    req = TracesRequest()
    req.resource_spans.add().scope_spans.add().spans.add(name=name)
    return req.SerializeToString()


class Renaming(Stage):
    """A byte stage that changes every request (so the next stage gets new bytes)."""

    takes_trace_bytes = True

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        req = TracesRequest.FromString(raw)
        req.resource_spans[0].scope_spans[0].spans[0].name += "+"
        return [req.SerializeToString()]


class ReadsAhead(Renaming):
    def __init__(self) -> None:
        self.prepared: list[tuple[bytes, bool, threading.Thread]] = []
        self.got: list[tuple[bytes, threading.Thread]] = []

    def prepare_trace_bytes(self, raw: bytes) -> None:
        self.prepared.append((raw, self.lock._is_owned(), threading.current_thread()))  # type: ignore[attr-defined]

    def on_trace_bytes(self, raw: bytes) -> list[bytes]:
        self.got.append((raw, threading.current_thread()))
        return super().on_trace_bytes(raw)


def test_prepare_gets_the_stages_own_bytes_before_its_lock() -> None:
    first, second = Renaming(), ReadsAhead()
    first.name, second.name = "first", "second"
    sent: list[Emitted] = []
    pipeline = Pipeline([first, second], StageContext(registry=CollectorRegistry()), sink=sent.append)
    out, rejections = pipeline.process(Emitted(traces=[request_bytes("a")]))
    assert rejections.count == 0
    [(prepared, locked, thread)] = second.prepared
    [(got, got_thread)] = second.got
    assert prepared is got  # the bytes the first stage produced, not the received ones
    assert TracesRequest.FromString(got).resource_spans[0].scope_spans[0].spans[0].name == "a+"
    assert not locked and thread is got_thread is threading.current_thread()
    assert TracesRequest.FromString(out.traces[0]).resource_spans[0].scope_spans[0].spans[0].name == "a++"


def test_stages_without_prepare_and_several_requests_get_no_call() -> None:
    stage = ReadsAhead()
    pipeline = Pipeline([stage], StageContext(registry=CollectorRegistry()), sink=lambda e: None)
    pipeline.process(Emitted(traces=[request_bytes("a"), request_bytes("b")]))  # a flush's batch: read in place
    assert stage.prepared == [] and len(stage.got) == 2
    assert not Pipeline([Renaming()], StageContext(registry=CollectorRegistry()), sink=lambda e: None)._prepares[0]
