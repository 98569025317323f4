"""Issue 19: a broad PII corpus in every position of a trace, log and metric request leaves no raw form (native and
Python paths alike); innocent values pass byte-identical; raw ids never sit next to their pseudonyms."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_redaction_native import Pair, needs_native
from wire_encodings import reversed_fields

from processor.redaction.labels import redact_label
from processor.redaction.rules import DEFAULT_RULES

# At least 100 distinct values of every kind of the issue (raw forms that must not survive downstream).
CORPUS: list[str] = [
    # emails: plain, plus, IDN, quoted local part, encoded
    "jane.doe@example.com", "j.smith+promo@mail.example.org", "jürgen@müller.de", "иван@пример.рф",
    '"jane doe"@example.com', "anna%40example.net", "bob&#64;example.io", "carl＠example．com",
    # phones: E.164, national by region
    "+1 415 555 2671", "+44 20 7946 0958", "+49 30 1234567", "0044 20 7946 0958", "(415) 555-2671",
    "020 7946 0958", "07700 900123", "030 12345678", "0171/1234567", "01 23 45 67 89", "06.12.34.56.78",
    "%2B14155552671",
    # cards: brands and separators, full-width
    "4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011111111111117", "3530111333300000",
    "4111.1111.1111.1111", "６０１１１１１１１１１１１１１７", "30569309025904", "5019717010103742",
    # IBANs
    "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606",
    # IPs
    "203.0.113.42", "2001:db8:85a3::8a2e:370:7334", "fe80::1ff:fe23:4567:890a",
    # tokens and secrets
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "Bearer abcdef0123456789abcdef", "AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A",
    "ghp_1234567890abcdefghijABCDEFGHIJ123456", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "rk_live_51H8abcdefghijklmnop", "xoxb-123456789012-abcdefghijklmn",
    "xoxp-2222222222-abcdefABCDEF", "Basic dXNlcjpwYXNzd29yZA==", "api_key=9f8e7d6c5b4a3210",
    "https://api.example.com/v1?apikey=s3cr3tvalue&q=1", "password=hunter2hunter2", "access_token=ya29.a0AfH6SM",
    "client_secret=abc123def456", "x-api-key=0123456789abcdef",
    # national identifiers
    "123-45-6789", "078 05 1120", "219-09-9999",
    # MAC addresses
    "00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "a4:83:e7:12:34:56",
    # precise coordinates
    "52.520008, 13.404954", "40.712776,-74.005974", "-33.868820, 151.209296",
    # session cookies
    "JSESSIONID=ABCDEF1234567890", "sessionid=8f14e45fceea167a", "PHPSESSID=el4ukv0kqbvoirg7nkp4dncpk3",
    "connect.sid=s%3AabcdefghijklMNOP",
]
# In free text too: each value inside a sentence.
CORPUS += [f"contact {value} please" for value in CORPUS[:45]]
# Numbers sent as numbers: card numbers as ints.
INT_CORPUS = [4111111111111111, 5555555555554444, 378282246310005, 6011111111111117]

INNOCENT: list[str] = [
    "recommendation-service", "reco.fetch_user_history", "home", "product_page", "cf-2024.06.1", "pop-1.3",
    "item-48213", "worker-3", "score", "2026-11-24T09:49:34.123Z", "GET /api/v1/items", "200", "true",
    "b7ad6b7169203331", "0af7651916cd43dd8448eb211c80319c", "experiment B", "model cf loaded in 12 ms",
    "candidates=1234", "batch of 64", "en-US", "Berlin", "café crème", "naïve bayes", "日本語のテキスト",
    "user clicked the carousel", "order confirmed", "http://example.com/items/42", "ratio 0.25 of 1.0",
    "k8s.pod.name", "recommendation-service-7d9f8-00012", "us-east-1", "t3.medium", "v2", "OK", "Not Found",
    "The bearer of good news", "a:b", "10 apples, 20 pears", "2026-11-24", "12:30:45", "v1.2.3", "x=1",
    "SELECT * FROM items WHERE id = ?", "timeout after 30s", "retry 3 of 5", "null", "{}", "[]", "42%",
    "Tom & Jerry", "R&D", "50% off", "α-beta", "Ünïcödé", "emoji 😀", "size=L", "color=red&size=M",
]
assert len(set(CORPUS)) >= 100


def add_trace_everywhere(req: ExportTraceServiceRequest, value: str, trace_id: bytes, span_id: bytes,
                         service: str = "svc", start: int = 0, end: int = 0):  # -> Span
    """A resource spans with `value` in every scanned position (keys, values, names, states, scope, ...)."""
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    rs.resource.attributes.add(key=f"r {value}").value.string_value = value
    ss = rs.scope_spans.add()
    ss.scope.name = value
    ss.scope.version = value
    ss.scope.attributes.add(key="s").value.string_value = value
    span = ss.spans.add(trace_id=trace_id, span_id=span_id, name=value, trace_state=f"v={value}",
                        start_time_unix_nano=start, end_time_unix_nano=end)
    span.attributes.add(key="a").value.string_value = value
    span.attributes.add(key=value).value.bool_value = True
    span.attributes.add(key="b").value.bytes_value = value.encode("utf-8")
    nested = span.attributes.add(key="n").value.kvlist_value.values.add(key="inner")
    nested.value.array_value.values.add().string_value = value
    span.status.message = value
    event = span.events.add(name=value, time_unix_nano=start)
    event.attributes.add(key="e").value.string_value = value
    link = span.links.add(trace_id=trace_id, span_id=bytes(8), trace_state=f"v={value}")
    link.attributes.add(key="l").value.string_value = value
    return span


def _trace_request(values: list[str]) -> bytes:
    req = ExportTraceServiceRequest()
    for i, value in enumerate(values):
        add_trace_everywhere(req, value, bytes(16), i.to_bytes(8, "big"))
    return req.SerializeToString()


def _raw_survives(out: bytes, value: str) -> bool:
    return value.encode("utf-8") in out


@pytest.fixture(scope="module")
def pair() -> Pair:
    return Pair(DEFAULT_RULES)  # make_stage sets the pseudonym key only while it builds each stage


@needs_native
def test_no_corpus_value_survives_any_trace_position_on_either_path(pair: Pair) -> None:
    for value in CORPUS:
        out = pair.check(_trace_request([value]))  # native == Python path == message walk
        assert not _raw_survives(out, value), value


@needs_native
def test_card_numbers_sent_as_integers_are_redacted(pair: Pair) -> None:
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(name="pay")
    for i, number in enumerate(INT_CORPUS):
        span.attributes.add(key=f"n{i}").value.int_value = number
        span.attributes.add(key=f"d{i}").value.double_value = float(number)
    out = ExportTraceServiceRequest.FromString(pair.check(req.SerializeToString()))
    values = {kv.key: kv.value for kv in out.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert all(values[f"n{i}"].string_value == "<card>" for i in range(len(INT_CORPUS)))


@needs_native
def test_innocent_values_pass_byte_identical(pair: Pair) -> None:
    kept = 0
    for value in INNOCENT:
        raw = _trace_request([value])
        out = pair.check(raw)
        kept += out == raw
    assert kept / len(INNOCENT) >= 0.99


@needs_native
def test_not_personal_keys_are_left_alone(pair: Pair) -> None:
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(name="s")
    for key, value in (("service.version", "1.2.3.4"), ("batch.id", "123-456-7890"), ("order.id", "4111111111111111"),
                       ("build.number", "20261124"), ("reco.model_version", "10.0.0.1")):
        span.attributes.add(key=key).value.string_value = value
    raw = req.SerializeToString()
    assert pair.check(raw) is raw


@needs_native
@pytest.mark.parametrize("key", ["user_id", "userId", "app.user.id", "customer.id", "User.Id", "enduser.id",
                                 "customer_email", "member.id"])
def test_identifier_spellings_are_pseudonymised(pair: Pair, key: str) -> None:
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(name="s").attributes.add(key=key).value.string_value = "id-98765"
    out = pair.check(req.SerializeToString())
    assert b"id-98765" not in out and b"u_" in out


@needs_native
def test_a_raw_id_never_sits_next_to_its_pseudonym(pair: Pair) -> None:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    span = rs.scope_spans.add().spans.add(name="GET /users/12345/profile")
    span.attributes.add(key="user.id").value.string_value = "12345"
    span.attributes.add(key="url.path").value.string_value = "/users/12345/profile"
    span.events.add(name="user-12345 clicked")
    other = rs.scope_spans[0].spans.add(name="untouched 12345")  # another span: not this identity's scope
    other.attributes.add(key="k").value.string_value = "v"
    out = ExportTraceServiceRequest.FromString(pair.check(req.SerializeToString()))
    first, second = out.resource_spans[0].scope_spans[0].spans
    assert "12345" not in str(first)
    pseudonym = next(kv.value.string_value for kv in first.attributes if kv.key == "user.id")
    assert first.name == f"GET /users/{pseudonym}/profile" and first.events[0].name == f"user-{pseudonym} clicked"
    assert second.name == "untouched 12345"


def _span_identity_in_resource() -> ExportTraceServiceRequest:
    """A span's user.id whose raw form also stands in its resource and scope (not in another resource)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="host.note").value.string_value = "serving user-777 today"
    ss = rs.scope_spans.add()
    ss.scope.name = "lib for user-777"
    ss.scope.attributes.add(key="scope.note").value.string_value = "user-777"
    ss.spans.add(name="s").attributes.add(key="user.id").value.string_value = "user-777"
    other = req.resource_spans.add()
    other.resource.attributes.add(key="host.note").value.string_value = "serving user-777 too"
    other.scope_spans.add().spans.add(name="t").attributes.add(key="k").value.string_value = "v"
    return req


@needs_native
def test_a_span_identity_leaves_its_resource_and_scope(pair: Pair) -> None:
    raw = _span_identity_in_resource().SerializeToString()
    assert pair.native.native.scanner.redact(raw) is None  # the scanner hands it to the Python path
    out = ExportTraceServiceRequest.FromString(pair.check(raw))  # both paths, the same bytes
    rs, other = out.resource_spans
    pseudonym = rs.scope_spans[0].spans[0].attributes[0].value.string_value
    assert pseudonym.startswith("u_")
    assert rs.resource.attributes[0].value.string_value == f"serving {pseudonym} today"
    assert rs.scope_spans[0].scope.name == f"lib for {pseudonym}"
    assert rs.scope_spans[0].scope.attributes[0].value.string_value == pseudonym
    assert other.resource.attributes[0].value.string_value == "serving user-777 too"  # not this span's resource


@needs_native
def test_a_span_identity_absent_from_its_resource_stays_in_c(pair: Pair) -> None:
    """The resource and scope are searched for the raw id, so requests without it are not handed to Python
    (the resource written after its spans, as otelcol may, included)."""
    req = _span_identity_in_resource()
    del req.resource_spans[0]
    req.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="user.id").value.string_value = "user-778"
    for raw in (req.SerializeToString(), reversed_fields(req)):
        assert pair.native.native.scanner.redact(raw) is not None
        assert b"user-778" not in pair.check(raw)


def test_a_log_record_identity_leaves_its_resource_and_scope(pair: Pair) -> None:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="host.note").value.string_value = "serving user-777 today"
    sl = rl.scope_logs.add()
    sl.scope.attributes.add(key="scope.note").value.string_value = "for user-777"
    sl.log_records.add().attributes.add(key="user.id").value.string_value = "user-777"
    for stage in (pair.native, pair.python):
        (out,) = stage.on_logs(ExportLogsServiceRequest.FromString(req.SerializeToString()))
        assert b"user-777" not in out.SerializeToString()
        rl_out = out.resource_logs[0]
        pseudonym = rl_out.scope_logs[0].log_records[0].attributes[0].value.string_value
        assert rl_out.resource.attributes[0].value.string_value == f"serving {pseudonym} today"
        assert rl_out.scope_logs[0].scope.attributes[0].value.string_value == f"for {pseudonym}"


def test_logs_and_metrics_every_position(pair: Pair) -> None:
    redactor = pair.python.redactor
    for value in CORPUS:
        logs = ExportLogsServiceRequest()
        rl = logs.resource_logs.add()
        rl.resource.attributes.add(key=value).value.string_value = value
        sl = rl.scope_logs.add()
        sl.scope.name = value
        record = sl.log_records.add(event_name=value)
        record.body.string_value = f"body {value}"
        record.attributes.add(key="user.id").value.string_value = "user-777"
        record.attributes.add(key="m").value.bytes_value = value.encode()
        redactor.logs(logs)
        assert value.encode() not in logs.SerializeToString(), value
        metrics = ExportMetricsServiceRequest()
        metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add(name=value, description=value,
                                                                                unit=value)
        metric.gauge.data_points.add(as_double=1.0).attributes.add(key=value).value.string_value = value
        redactor.metrics(metrics)
        assert value.encode() not in metrics.SerializeToString(), value


def test_log_body_does_not_show_the_raw_id_next_to_its_pseudonym(pair: Pair) -> None:
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.attributes.add(key="user.id").value.string_value = "user-12345"
    record.body.string_value = "user-12345 clicked item-9"
    pair.python.redactor.logs(logs)
    pseudonym = record.attributes[0].value.string_value
    assert record.body.string_value == f"{pseudonym} clicked item-9"


def test_metrics_labels_are_redacted() -> None:
    assert redact_label("checkout for jane@example.com") == "checkout for <email>"
    assert redact_label("reco.fetch_user_history") == "reco.fetch_user_history"


def test_blocked_values_add_operator_patterns() -> None:
    custom = Pair({**DEFAULT_RULES, "blocked_values": ["ORD-[0-9]{6}", {"regex": "emp[0-9]{5}", "with": "<emp>",
                                                                          "ignore_case": True}]})
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(name="order ORD-123456 by EMP12345")
    out = ExportTraceServiceRequest.FromString(custom.check(req.SerializeToString()))
    assert out.resource_spans[0].scope_spans[0].spans[0].name == "order <redacted> by <emp>"


def _metrics_with_identity() -> ExportMetricsServiceRequest:
    """A data point carrying user.id, the same raw id in its other attributes, an exemplar, the resource and the
    scope; a second point without the identity; and an exemplar carrying an identity of its own."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="host.note").value.string_value = "served user-4242 today"
    sm = rm.scope_metrics.add()
    sm.scope.attributes.add(key="scope.note").value.string_value = "for user-4242"
    points = sm.metrics.add(name="reco.clicks").sum.data_points
    point = points.add(as_int=1)
    point.attributes.add(key="user.id").value.string_value = "user-4242"
    point.attributes.add(key="url.path").value.string_value = "/users/user-4242/recs"
    point.attributes.add(key="ctx").value.kvlist_value.values.add(key="who").value.string_value = "user-4242"
    point.exemplars.add(as_int=1).filtered_attributes.add(key="note").value.string_value = "user-4242 clicked"
    other = points.add(as_int=2)
    other.attributes.add(key="note").value.string_value = "order ord-77 for member-9191"
    other.exemplars.add(as_int=1).filtered_attributes.add(key="member.id").value.string_value = "member-9191"
    sm.metrics.add(name="reco.views").gauge.data_points.add(as_double=1.0).attributes.add(
        key="note").value.string_value = "viewed by someone"
    return req


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_metric_data_point_identities_are_scrubbed(pair: Pair, native: bool) -> None:
    stage = pair.native if native else pair.python
    (out,) = stage.on_metrics(_metrics_with_identity())
    data = out.SerializeToString()
    assert b"user-4242" not in data and b"member-9191" not in data
    rm = out.resource_metrics[0]
    first, second = rm.scope_metrics[0].metrics[0].sum.data_points
    attrs = {kv.key: kv.value for kv in first.attributes}
    pseudonym = attrs["user.id"].string_value
    assert pseudonym.startswith("u_")
    assert attrs["url.path"].string_value == f"/users/{pseudonym}/recs"
    assert attrs["ctx"].kvlist_value.values[0].value.string_value == pseudonym
    assert first.exemplars[0].filtered_attributes[0].value.string_value == f"{pseudonym} clicked"
    assert rm.resource.attributes[0].value.string_value == f"served {pseudonym} today"
    assert rm.scope_metrics[0].scope.attributes[0].value.string_value == f"for {pseudonym}"
    member = second.exemplars[0].filtered_attributes[0].value.string_value  # an exemplar's own identity
    assert second.attributes[0].value.string_value == f"order ord-77 for {member}"
    gauge = rm.scope_metrics[0].metrics[1].gauge.data_points[0]
    assert gauge.attributes[0].value.string_value == "viewed by someone"


def test_resource_identities_leave_metric_data_points(pair: Pair) -> None:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="enduser.id").value.string_value = "acct-5150"
    point = rm.scope_metrics.add().metrics.add(name="m").gauge.data_points.add(as_double=1.0)
    point.attributes.add(key="note").value.string_value = "quota of acct-5150"
    point.exemplars.add(as_double=1.0).filtered_attributes.add(key="n").value.string_value = "acct-5150"
    (out,) = pair.python.on_metrics(req)
    assert b"acct-5150" not in out.SerializeToString()
    pseudonym = out.resource_metrics[0].resource.attributes[0].value.string_value
    assert out.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].attributes[0].value.string_value \
        == f"quota of {pseudonym}"
