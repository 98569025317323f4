"""The redaction stage on real OTLP messages: no raw PII byte in the serialized output, wherever it was;
ordinary attributes pass byte-identical; the stage (native scanner when built) equals the message walk; audit
metrics."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client import CollectorRegistry
from redaction_corpus import ORDINARY, pii_values, sentences
from redaction_requests import kv, logs_request, metrics_request, traces_request

from processor.config_node import ConfigError, Node
from processor.redaction.redactor import Redactor
from processor.redaction.rules import DEFAULT_RULES, SUMMARY_ATTRIBUTE
from processor.signals import count_items
from processor.stages.base import StageContext
from processor.stages.redaction import RedactionStage, build

KEY = "test-pseudonym-key-0123456789"
PII = pii_values(seed=3)
RAW = [raw for _, raw in PII]
TEXTS = sentences(PII)


def make_stage(rules: dict | None = None, registry: CollectorRegistry | None = None,
               builtin_default: bool = False, file: str = "<test>") -> RedactionStage:
    ctx = StageContext(registry=registry or CollectorRegistry(), builtin_default=builtin_default)
    node = Node({"type": "redaction", **copy.deepcopy(rules if rules is not None else DEFAULT_RULES)}, file)
    node.str("type")
    stage = build(node, ctx)
    node.done()
    assert isinstance(stage, RedactionStage)
    return stage


@pytest.fixture(autouse=True)
def pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOHOP_PSEUDONYM_KEY", KEY)


def assert_no_raw(data: bytes, raws: list[str]) -> None:
    leaked = [raw for raw in raws if raw.encode() in data]
    assert not leaked, f"{len(leaked)} raw values leaked, e.g. kind of first: {leaked[0][:3]}..."


def test_traces_every_position_redacted() -> None:
    stage = make_stage()
    request = traces_request(TEXTS, user_ids=["u-48213-x", "u-99120-y"])
    assert all(raw.encode() in request.SerializeToString() for raw in RAW)  # the test input really has them
    (out,) = stage.on_traces(request)
    data = out.SerializeToString()
    assert_no_raw(data, RAW + ["u-48213-x", "u-99120-y"])
    parsed = ExportTraceServiceRequest.FromString(data)
    span = parsed.resource_spans[0].scope_spans[0].spans[0]
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["user.id"].string_value.startswith("u_")
    assert attrs["reco.placement"].string_value == "home" and attrs["reco.num_results"].int_value == 10
    assert "<" in span.name and "<" in span.status.message and "<" in span.events[0].name


def test_logs_and_metrics_every_position_redacted() -> None:
    stage = make_stage()
    (logs,) = stage.on_logs(logs_request(TEXTS))
    assert_no_raw(logs.SerializeToString(), RAW)
    (metrics,) = stage.on_metrics(metrics_request(TEXTS))
    assert_no_raw(metrics.SerializeToString(), RAW)
    point = metrics.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert point.as_int == 3 and "<" in point.exemplars[0].filtered_attributes[0].value.string_value


def test_ordinary_recommender_data_passes_byte_identical() -> None:
    stage = make_stage()
    for build_request in (traces_request, logs_request, metrics_request):
        request = build_request(ORDINARY)
        before = request.SerializeToString()
        handler = {traces_request: stage.on_traces, logs_request: stage.on_logs,
                   metrics_request: stage.on_metrics}[build_request]
        (out,) = handler(request)
        assert out.SerializeToString() == before


def test_stage_equals_message_walk() -> None:
    stage, slow = make_stage(), make_stage()
    for texts in (TEXTS, ORDINARY, TEXTS + ORDINARY):
        a = traces_request(texts, user_ids=["u-1", "u-2", "u-1"])
        b = copy.deepcopy(a)
        for _ in range(2):  # second round: from the caches
            stage.on_traces(a)
            slow.redactor.traces(b)
            assert a.SerializeToString() == b.SerializeToString()


def test_stage_with_tiny_caches_still_redacts_everything() -> None:
    """Caches are bounded and cleared when full; a clear in the middle of a request must not lose PII."""
    stage, slow = make_stage(), make_stage()
    stage.redactor.detectors.CACHE_MAX = 2
    for texts in (TEXTS, TEXTS[::-1] + ORDINARY):
        a = traces_request(texts, user_ids=["u-1", "u-2", "u-3"])
        b = copy.deepcopy(a)
        stage.on_traces(a)
        slow.redactor.traces(b)
        assert a.SerializeToString() == b.SerializeToString()
        assert_no_raw(a.SerializeToString(), RAW + ["u-1", "u-2", "u-3"])


def test_pseudonyms_stable_across_requests_and_stages_and_keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    def pseudonym(stage: RedactionStage) -> str:
        (out,) = stage.on_traces(traces_request(["x"], user_ids=["user-777"]))
        attrs = out.resource_spans[0].scope_spans[0].spans[0].attributes
        return next(a.value.string_value for a in attrs if a.key == "user.id")

    first = make_stage()
    p1, p2, p3 = pseudonym(first), pseudonym(first), pseudonym(make_stage())
    assert p1 == p2 == p3 and p1.startswith("u_") and len(p1) == 2 + 16
    monkeypatch.setenv("RECOHOP_PSEUDONYM_KEY", "another-key-another-key-0000")
    assert pseudonym(make_stage()) != p1


def test_actions_and_allowlist() -> None:
    rules = {"mode": "allowlist", "otherwise": "drop", "summary_attribute": True, "rules": [
        {"key": "service.name", "action": "keep"},
        {"key": "reco.placement", "action": "keep"},
        {"key": "reco.search_query", "action": "mask", "with": "<query>"},
        {"key": "client.address", "action": "generalise", "as": "ip"},
        {"key": "user.age", "action": "generalise", "as": "age"},
        {"key": "geo", "action": "generalise", "as": "geo"},
        {"key": "reco.note", "action": "keep"},
        {"key": "reco.note_unscanned", "action": "keep", "detectors": False},
        {"key": "user.id", "action": "pseudonymise"},
    ]}
    stage = make_stage(rules)
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(name="reco.generate")
    span.attributes.extend([
        kv("reco.placement", "home"), kv("reco.search_query", "red dress"), kv("client.address", "198.51.100.7"),
        kv("user.age", 37), kv("geo", "US-CA"), kv("reco.note", "mail a@b.io"),
        kv("reco.note_unscanned", "mail a@b.io"), kv("user.id", 42), kv("unlisted", "gone"), kv("other", 1)])
    (out,) = stage.on_traces(request)
    got = {a.key: a.value for a in out.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert set(got) == {"reco.placement", "reco.search_query", "client.address", "user.age", "geo", "reco.note",
                        "reco.note_unscanned", "user.id", SUMMARY_ATTRIBUTE}
    assert got["reco.search_query"].string_value == "<query>"
    assert got["client.address"].string_value == "198.51.100.0/24"
    assert got["user.age"].string_value == "35-44" and got["geo"].string_value == "US"
    assert got["reco.note"].string_value == "mail <email>"
    assert got["reco.note_unscanned"].string_value == "mail a@b.io"
    assert got["user.id"].string_value.startswith("p_")
    # query, address, age, geo, note (detector), user.id, unlisted, other
    assert got[SUMMARY_ATTRIBUTE].int_value == 8


def test_audit_metrics_count_rules_detectors_and_spans_never_values() -> None:
    registry = CollectorRegistry()
    stage = make_stage(registry=registry)
    stage.on_traces(traces_request(["mail jane@example.com", "nothing here"], user_ids=["user-1"]))
    value = registry.get_sample_value
    assert value("recohop_redaction_rule_hits_total", {"rule": "user.*"}) == 2
    assert value("recohop_redaction_rule_hits_total", {"rule": "client.address"}) == 0
    # resource attribute, then on the span: name, search query, nested deep + list, event name + attribute,
    # link attribute, status message
    assert value("recohop_redaction_detector_hits_total", {"detector": "email"}) == 9
    assert value("recohop_redaction_spans_touched_total") == 2
    exposition = b"".join(
        f"{s.name}{s.labels}{s.value}".encode() for m in registry.collect() for s in m.samples)
    assert b"jane" not in exposition and b"user-1" not in exposition


def test_pseudonymise_without_key_refuses_with_clear_message(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.delenv("RECOHOP_PSEUDONYM_KEY")
    with pytest.raises(ConfigError) as err:
        make_stage(file=str(tmp_path / "hop.yaml"))
    message = str(err.value)
    assert str(tmp_path / "hop.yaml") in message and "RECOHOP_PSEUDONYM_KEY" in message
    assert "pseudonymises" in message and "is not set" in message
    monkeypatch.setenv("RECOHOP_PSEUDONYM_KEY", "short")
    with pytest.raises(ConfigError, match="is too short"):
        make_stage()
    # Rules without pseudonymisation need no key.
    make_stage({"rules": [{"key": "user.id", "action": "drop"}]})


def test_builtin_default_gets_throwaway_key_with_warning(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("RECOHOP_PSEUDONYM_KEY")
    with caplog.at_level(logging.WARNING, logger="recohop"):
        stage = make_stage(builtin_default=True)
    assert "throwaway pseudonym key" in caplog.text and "differ after a restart" in caplog.text
    (out,) = stage.on_traces(traces_request(["x"], user_ids=["user-5"]))
    assert b"user-5" not in out.SerializeToString()


def test_key_file_and_rules_file_relative_to_hop_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECOHOP_PSEUDONYM_KEY")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "key.txt").write_text(KEY + "\n")
    (tmp_path / "conf" / "rules.yaml").write_text(
        "pseudonym: {key_file: key.txt}\nrules:\n  - {glob: 'user.*', action: pseudonymise, prefix: u_}\n")
    node = Node({"type": "redaction", "rules": "rules.yaml"}, tmp_path / "conf" / "hop.yaml")
    node.str("type")
    stage = build(node, StageContext(registry=CollectorRegistry()))
    node.done()
    (out,) = stage.on_traces(traces_request(["x"], user_ids=["user-777"]))
    with_file = [a.value.string_value for a in out.resource_spans[0].scope_spans[0].spans[0].attributes
                 if a.key == "user.id"]
    monkeypatch.setenv("RECOHOP_PSEUDONYM_KEY", KEY)
    (again,) = make_stage().on_traces(traces_request(["x"], user_ids=["user-777"]))
    with_env = [a.value.string_value for a in again.resource_spans[0].scope_spans[0].spans[0].attributes
                if a.key == "user.id"]
    assert with_file == with_env
    bad = Node({"type": "redaction", "rules": "rules.yaml", "mode": "allowlist"}, tmp_path / "conf" / "hop.yaml")
    with pytest.raises(ConfigError, match="no inline rule settings"):
        build(bad, StageContext(registry=CollectorRegistry()))


# ---------------------------------------------------------------- property tests

_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(RAW + ORDINARY + TEXTS))


def _any_value(draw_children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda s: AnyValue(string_value=s), _TEXT),
        st.builds(lambda i: AnyValue(int_value=i), st.integers(-2**63, 2**63 - 1)),
        st.builds(lambda b: AnyValue(bool_value=b), st.booleans()),
        st.builds(lambda b: AnyValue(bytes_value=b), st.binary(max_size=20)),
        st.builds(lambda vs: _array(vs), st.lists(draw_children, max_size=3)),
        st.builds(lambda items: _kvlist(items), st.lists(st.tuples(_KEYS, draw_children), max_size=3)),
    )


def _array(values: list[AnyValue]) -> AnyValue:
    out = AnyValue()
    out.array_value.values.extend(values)
    return out


def _kvlist(items: list[tuple[str, AnyValue]]) -> AnyValue:
    out = AnyValue()
    for key, value in items:
        out.kvlist_value.values.add(key=key).value.CopyFrom(value)
    return out


_KEYS = st.one_of(st.sampled_from(["user.id", "user.email", "client.address", "reco.placement", "enduser.id",
                                   "http.client_ip", "note"]), st.text(max_size=12))
_VALUES = st.recursive(st.builds(lambda s: AnyValue(string_value=s), _TEXT), _any_value, max_leaves=8)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_KEYS, _VALUES), min_size=1, max_size=6), _TEXT, st.integers(1, 3))
def test_no_input_makes_the_stage_raise_and_output_is_valid_otlp(attrs, name, spans) -> None:
    request = ExportTraceServiceRequest()
    ss = request.resource_spans.add().scope_spans.add()
    for i in range(spans):
        span = ss.spans.add(name=name, trace_id=bytes([i]) * 16)
        for key, value in attrs:
            span.attributes.add(key=key).value.CopyFrom(value)
        span.events.add(name=name).attributes.add(key=attrs[0][0]).value.CopyFrom(attrs[0][1])
        span.status.message = name
    reference = copy.deepcopy(request)
    stage = _PROPERTY_STAGE
    (out,) = stage.on_traces(request)
    data = out.SerializeToString()
    ExportTraceServiceRequest.FromString(data)  # valid OTLP
    Redactor(stage.redactor.rules, stage.redactor.pseudonymiser).traces(reference)
    assert data == reference.SerializeToString()  # stage == message walk
    logs = logs_request([name])
    for record in logs.resource_logs[0].scope_logs[0].log_records:
        record.body.CopyFrom(attrs[0][1])
    stage.on_logs(logs)
    type(logs).FromString(logs.SerializeToString())


# One stage for every example, so its caches carry over between examples as they do in a running hop.
_PROPERTY_STAGE = make_stage({**DEFAULT_RULES, "summary_attribute": True}, builtin_default=True)


def test_metric_metadata_is_redacted() -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="reco.requests")
    metric.metadata.add(key="user.id").value.string_value = "alice@example.com"
    metric.gauge.data_points.add().as_int = 1
    (out,) = make_stage().on_metrics(request)
    assert b"alice@example.com" not in out.SerializeToString()


def test_long_word_runs_scan_in_linear_time() -> None:
    """The email pattern used to backtrack quadratically on long runs (seconds per value, under the lock)."""
    import time

    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for body in ("x@" + "a" * 40_000, "a@" + "b." * 40_000):
        records.add().body.string_value = body
    began = time.process_time()
    make_stage().on_logs(request)
    assert time.process_time() - began < 1.0


def test_unreadable_values_are_counted_on_metrics(pseudonym_key: None) -> None:
    """A value a generalising rule cannot read costs only itself (it becomes the tag) and is counted per rule."""
    registry = CollectorRegistry()
    stage = make_stage(registry=registry)
    sample = {"rule": "client.address"}
    assert registry.get_sample_value("recohop_redaction_unreadable_values_total", sample) == 0
    rule = stage.redactor.rules.lookup("client.address")
    assert rule is not None and rule.generalise is not None

    def unreadable(_value: object) -> str:
        raise ValueError("cannot read this value")

    rule.generalise.inner = unreadable
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    span.attributes.extend([kv("client.address", "203.0.113.9"), kv("other", "x")])
    out = ExportTraceServiceRequest.FromString(stage.on_trace_bytes(request.SerializeToString())[0])
    attributes = {a.key: a.value.string_value for a in out.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert attributes["client.address"] == rule.generalise.tag and attributes["other"] == "x"
    assert registry.get_sample_value("recohop_redaction_unreadable_values_total", sample) == 1


def test_the_stage_keeps_every_span() -> None:
    """`keeps_span_count`: rules drop attributes and rewrite values, never spans, so the receiver's span count
    travels on to the exporter without a parse."""
    stage = make_stage()
    assert stage.keeps_span_count
    req = traces_request(["mail jane.doe@example.com", "call +1 415 555 2671", "plain"], ["user-1", "user-2"])
    raw = req.SerializeToString()
    (out,) = stage.on_trace_bytes(raw)
    assert out != raw  # something was redacted
    assert count_items("traces", out) == count_items("traces", raw) == 3
