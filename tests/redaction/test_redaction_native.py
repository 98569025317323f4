"""The redaction traces pass in C (`processor/native/_redact.c` via `processor/redaction/native.py`) against the
pure-Python path (the message walk): the same redacted requests and the same
self-metrics on the benchmark workload and on random requests (every AnyValue kind, nested kvlists/arrays,
events, links, odd ids, several resources and scopes), the input bytes object itself when nothing changes, and
a prefilter that never skips a value a detector would hit."""

from __future__ import annotations

import copy
import gc
import hmac
import os
import random
import subprocess
import sys
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client import CollectorRegistry
from redaction_corpus import ORDINARY, pii_values, sentences
from redaction_requests import traces_request
from wire_encodings import reversed_fields

from bench.workload import generate
from processor.config_node import Node
from processor.native import load
from processor.otlp_values import kv, varint
from processor.pipeline import Pipeline
from processor.redaction.detectors import KINDS, Detectors, may_be_encoded, possible_kinds
from processor.redaction.native import ENCODED_BIT, KIND_IDS, NativeTraces
from processor.redaction.redactor import Redactor
from processor.redaction.rules import DEFAULT_RULES
from processor.stages.base import Emitted, StageContext
from processor.stages.redaction import RedactionStage, build

NATIVE = load("redact")
needs_native = pytest.mark.skipif(NATIVE is None, reason="native scanner not built")
KEY = "native-pseudonym-key-0123456789"
PII = pii_values(seed=17)
RAW = [raw for _, raw in PII]
TEXTS = sentences(PII)

# Rule sets that exercise every action and the allowlist; each with the summary attribute on and off.
ACTIONS_RULES = {
    "detectors": {"kinds": ["email", "phone", "card", "ipv4", "ipv6", "jwt", "bearer", "iban"]},
    "summary_attribute": True,
    "rules": [
        {"key": "user.id", "action": "pseudonymise", "prefix": "u_"},
        {"glob": "user.*", "action": "mask", "with": "<user>"},
        {"key": "client.address", "action": "generalise", "as": "ip"},
        {"key": "user_age", "action": "generalise", "as": "age"},
        {"key": "geo", "action": "generalise", "as": "geo"},
        {"key": "secret", "action": "drop"},
        {"key": "note_raw", "action": "keep", "detectors": False},
        {"key": "note", "action": "keep"},
    ],
}
ALLOWLIST_RULES = {
    "mode": "allowlist", "otherwise": "mask", "mask_text": "<x>", "summary_attribute": True,
    "detectors": {"kinds": ["email", "ipv4"]},
    "rules": [{"key": "reco.placement", "action": "keep"}, {"key": "service.name", "action": "keep"},
              {"key": "enduser.id", "action": "pseudonymise"}, {"key": "k", "action": "drop", "name": "k-drop"}],
}
RULE_SETS = [DEFAULT_RULES, {**DEFAULT_RULES, "summary_attribute": True}, ACTIONS_RULES, ALLOWLIST_RULES,
             {**DEFAULT_RULES, "detectors": False}]


@pytest.fixture(autouse=True)
def pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOHOP_PSEUDONYM_KEY", KEY)


def make_stage(rules: dict, native: bool, registry: CollectorRegistry | None = None) -> RedactionStage:
    """The stage built with the native scanner, or with RECOHOP_NATIVE=0 (the pure-Python paths)."""
    env = os.environ.copy()
    os.environ["RECOHOP_PSEUDONYM_KEY"] = KEY
    if not native:
        os.environ["RECOHOP_NATIVE"] = "0"
    try:
        stage = build(Node({"type": "redaction", **copy.deepcopy(rules)}, "<test>"),
                      StageContext(registry=registry or CollectorRegistry()))
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert isinstance(stage, RedactionStage)
    assert (stage.native is not None) == native
    return stage


def audit(registry: CollectorRegistry) -> list[tuple[str, tuple, float]]:
    return sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                  for m in registry.collect() for s in m.samples if s.name.endswith("_total"))


def canonical(raw: bytes) -> bytes:
    return ExportTraceServiceRequest.FromString(raw).SerializeToString()


class Pair:
    """A native stage and a pure-Python stage with the same rules and key, each with its own registry."""

    def __init__(self, rules: dict) -> None:
        self.native_registry, self.python_registry = CollectorRegistry(), CollectorRegistry()
        self.native = make_stage(rules, True, registry=self.native_registry)
        self.python = make_stage(rules, False, registry=self.python_registry)
        self.walk = Redactor(self.python.redactor.rules, self.python.redactor.pseudonymiser)

    def check(self, raw: bytes) -> bytes:
        """Both stages on `raw`: the same request out (and the message walk agrees), the same audit metrics."""
        (native_out,) = self.native.on_trace_bytes(raw)
        message = ExportTraceServiceRequest.FromString(raw)
        (python_out,) = self.python.on_traces(message)
        assert canonical(native_out) == python_out.SerializeToString()
        reference = ExportTraceServiceRequest.FromString(raw)
        self.walk.traces(reference)
        assert python_out.SerializeToString() == reference.SerializeToString()
        assert audit(self.native_registry) == audit(self.python_registry)
        return native_out


def test_native_scanner_is_built_and_used() -> None:
    if NATIVE is None and os.environ.get("RECOHOP_NATIVE") == "0":
        pytest.skip("native scanners disabled by RECOHOP_NATIVE=0")
    assert NATIVE is not None, "processor.native._redact is not built (pip install -e .)"
    stage = make_stage(DEFAULT_RULES, True)
    assert stage.takes_trace_bytes
    raw = generate(requests=1, spans_per_request=200).requests[0]
    assert stage.native.scanner.redact(raw) is not None  # the scanner itself handled the benchmark request
    # ... also as otelcol encodes it (fields in reverse order)
    assert stage.native.scanner.redact(reversed_fields(ExportTraceServiceRequest.FromString(raw))) is not None
    # In a pipeline the hop hands the stage the received bytes.
    pipeline = Pipeline([stage], StageContext(registry=CollectorRegistry()), lambda emitted: None)
    assert pipeline.traces_as_bytes
    clean = traces_request(ORDINARY).SerializeToString()
    out, _ = pipeline.process(Emitted(traces=[clean]))
    assert out.traces[0] is clean  # nothing to redact: the original bytes go on


@needs_native
@pytest.mark.parametrize("rules", RULE_SETS, ids=["default", "summary", "actions", "allowlist", "no-detectors"])
def test_same_result_on_the_benchmark_workload(rules: dict) -> None:
    pair = Pair(rules)
    workload = generate(requests=4, spans_per_request=300, seed=3)
    changed = 0
    for raw in workload.requests:
        out = pair.check(raw)
        changed += out is not raw
    assert changed == len(workload.requests)  # every request holds user ids and client addresses
    assert b"@example.com" not in b"".join(pair.native.on_trace_bytes(raw)[0] for raw in workload.requests)


@needs_native
def test_unchanged_request_is_the_same_bytes_object() -> None:
    pair = Pair({**DEFAULT_RULES, "summary_attribute": True})
    raw = traces_request(ORDINARY).SerializeToString()
    assert pair.check(raw) is raw
    assert pair.native.on_trace_bytes(raw)[0] is raw


@needs_native
def test_every_position_and_tiny_memos() -> None:
    """PII in names, status, events, links, nested values, resource and scope; memos cleared mid-request."""
    pair = Pair({**DEFAULT_RULES, "summary_attribute": True})
    pair.native.native = NativeTraces(pair.native.redactor, NATIVE, memo_max=2)
    for texts in (TEXTS, ORDINARY + TEXTS, TEXTS[::-1]):
        raw = traces_request(texts, user_ids=["u-1", "u-2", "u-3"]).SerializeToString()
        out = pair.check(raw)
        assert not [r for r in RAW + ["u-1", "u-2"] if r.encode() in out]
    assert max(pair.native.native.scanner.memo_sizes()) <= 2


@needs_native
def test_keys_alike_in_length_and_last_byte_keep_their_own_actions() -> None:
    """The walk compares the key slot last found per (length, last byte) before hashing: keys that share such a
    bucket (user.abc is pseudonymised, zzzz.abc only scanned; zzzz.pwd, masked, beside them), alternating, keep their own
    actions, also when a new key's memo entry empties the memo in the middle of a request."""
    for memo_max in (2, 1000):
        pair = Pair({**DEFAULT_RULES, "summary_attribute": True})
        pair.native.native = NativeTraces(pair.native.redactor, NATIVE, memo_max=memo_max)
        request = traces_request(ORDINARY)
        for i, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
            for j in range(6):
                key = ("user.abc", "zzzz.abc", "user.abc", "zzzz.pwd")[(i + j) % 4]
                span.attributes.append(kv(key, f"value-{i}-{j}"))
        out = pair.check(request.SerializeToString())
        assert b"zzzz.abc" in out and b"value-0-1" in out  # the scanned key's value passes
        assert b"value-0-0" not in out  # user.abc's value is a pseudonym


@needs_native
def test_texts_alike_in_length_and_last_byte_are_each_scanned() -> None:
    """The walk remembers the text last cleared by the prefilter per (length, last byte): a clean name or value
    and one holding an e-mail address that share such a bucket, alternating span after span, are each judged on
    their own bytes."""
    pair = Pair({**DEFAULT_RULES, "summary_attribute": True})
    texts = ["plain texto", "mail a@b.io", "plain texto", "plain texto", "mail c@d.io"]
    request = traces_request(ORDINARY)
    for i, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
        span.name = texts[i % len(texts)]
        span.attributes.append(kv("reco.search_query", texts[(i + 1) % len(texts)]))
    out = pair.check(request.SerializeToString())
    assert b"plain texto" in out
    assert b"a@b.io" not in out and b"c@d.io" not in out


@needs_native
def test_bytes_the_scanner_does_not_handle_go_the_python_way() -> None:
    """A span name given twice (protobuf keeps the last): the scanner gives up, the stage still redacts."""
    pair = Pair({**DEFAULT_RULES, "summary_attribute": True})
    span = traces_request(["mail a@b.io"], user_ids=["u-9"]).resource_spans[0].scope_spans[0].spans[0]
    span_bytes = span.SerializeToString() + b"\x2a\x0bcall a@b.io"
    scope = b"\x12" + varint(len(span_bytes)) + span_bytes
    resource = b"\x12" + varint(len(scope)) + scope
    raw = b"\x0a" + varint(len(resource)) + resource
    assert pair.native.native.scanner.redact(raw) is None
    out = pair.check(raw)
    assert b"a@b.io" not in out and b"u-9" not in out


# ---------------------------------------------------------------- random requests

_TEXT = st.one_of(st.text(max_size=30), st.sampled_from(RAW + ORDINARY + TEXTS + ["", "ab", "10.1.2.3", " 10.1.2.3",
                                                                                   "US-CA", "37", "1.2.3.4:80"]))
_KEYS = st.one_of(st.sampled_from(["user.id", "user.email", "client.address", "reco.placement", "enduser.id",
                                   "http.client_ip", "note", "note_raw", "secret", "geo", "user_age", "k",
                                   "service.name", ""]), st.text(max_size=8))


def _array(values: list[AnyValue]) -> AnyValue:
    out = AnyValue()
    out.array_value.values.extend(values)
    return out


def _kvlist(items: list[tuple[str, AnyValue]]) -> AnyValue:
    out = AnyValue()
    for key, value in items:
        out.kvlist_value.values.add(key=key).value.CopyFrom(value)
    return out


_SCALARS = st.one_of(
    st.builds(lambda s: AnyValue(string_value=s), _TEXT),
    st.builds(lambda i: AnyValue(int_value=i), st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda b: AnyValue(bool_value=b), st.booleans()),
    st.builds(lambda d: AnyValue(double_value=d), st.floats(allow_nan=False)),
    st.builds(lambda b: AnyValue(bytes_value=b), st.one_of(st.binary(max_size=16), _TEXT.map(str.encode))),
    st.just(AnyValue()),
)
_VALUES = st.recursive(_SCALARS, lambda children: st.one_of(
    st.builds(_array, st.lists(children, max_size=3)),
    st.builds(_kvlist, st.lists(st.tuples(_KEYS, children), max_size=3))), max_leaves=6)
_ATTRS = st.lists(st.tuples(_KEYS, _VALUES), max_size=5)
_IDS = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20))


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = req.resource_spans.add()
        for key, value in draw(_ATTRS):
            rs.resource.attributes.add(key=key).value.CopyFrom(value)
        for _ in range(draw(st.integers(1, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(_TEXT)
            for key, value in draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=2)):
                ss.scope.attributes.add(key=key).value.CopyFrom(value)
            for _ in range(draw(st.integers(0, 3))):
                span = ss.spans.add(trace_id=draw(_IDS), span_id=draw(_IDS), name=draw(_TEXT),
                                    start_time_unix_nano=draw(st.integers(0, 2**64 - 1)))
                for key, value in draw(_ATTRS):
                    span.attributes.add(key=key).value.CopyFrom(value)
                for _ in range(draw(st.integers(0, 2))):
                    event = span.events.add(name=draw(_TEXT))
                    for key, value in draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=2)):
                        event.attributes.add(key=key).value.CopyFrom(value)
                for _ in range(draw(st.integers(0, 2))):
                    link = span.links.add(trace_id=draw(_IDS), span_id=draw(_IDS))
                    for key, value in draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=2)):
                        link.attributes.add(key=key).value.CopyFrom(value)
                if draw(st.booleans()):
                    span.status.message = draw(_TEXT)
                    span.status.code = draw(st.sampled_from([0, 1, 2]))
    return req.SerializeToString()


_PAIRS: dict[int, Pair] = {}  # one pair per rule set for all examples: memos carry over as in a running hop


@needs_native
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_requests(), st.integers(0, len(RULE_SETS) - 1))
def test_same_result_on_random_requests(raw: bytes, which: int) -> None:
    if which not in _PAIRS:
        _PAIRS[which] = Pair(RULE_SETS[which])
    pair = _PAIRS[which]
    out = pair.check(raw)
    if canonical(out) == canonical(raw):
        assert out is raw or pair.native.native.scanner.redact(raw) is None


@needs_native
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_requests(), st.integers(0, len(RULE_SETS) - 1))
def test_otelcol_field_order_redacts_like_the_parser(raw: bytes, which: int) -> None:
    """What otelcol sends (every message's fields in reverse order: a KeyValue's value before its key) is
    redacted as the parser reads it, and mostly by the scanner itself, not handed to Python."""
    pair = _PAIRS.setdefault(which, Pair(RULE_SETS[which]))
    pair.check(reversed_fields(ExportTraceServiceRequest.FromString(raw)))


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_bytes_never_crash_and_parsable_ones_match(data: st.DataObject) -> None:
    """Truncated, flipped or spliced bytes: the scanner gives up or answers; when upb accepts the bytes, the
    answer equals the Python path's."""
    pair = _PAIRS.setdefault(-1, Pair({**DEFAULT_RULES, "summary_attribute": True}))
    raw = bytearray(data.draw(_requests()))
    for _ in range(data.draw(st.integers(1, 3))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del raw[at:at + data.draw(st.integers(1, 8))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    damaged = bytes(raw)
    found = pair.native.native.scanner.redact(damaged)
    try:
        ExportTraceServiceRequest.FromString(damaged)
    except Exception:  # noqa: BLE001 - upb refuses it: the receiver would have too
        return
    if found is not None:
        pair.check(damaged)


# ---------------------------------------------------------------- the prefilter and the HMAC


def _mask(kinds: frozenset[str]) -> int:
    return sum(1 << KIND_IDS[k] for k in kinds)


_ALPHABET = st.sampled_from(list("0123456789 .-:+()@/abcdefxyzABCDEFXYZ_=;eyJ") +
                            ["Bearer ", "bearer ", "BEARER ", "::", "eyJ", "é", "ß", "Ⅻ", "٣", "😀", "\u0130"])


@needs_native
@settings(max_examples=600, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.lists(st.one_of(_ALPHABET, st.sampled_from(RAW + ORDINARY)), max_size=12).map("".join)))
def test_prefilter_never_skips_a_value_a_detector_would_hit(text: str) -> None:
    native = NATIVE.possible_kinds(text.encode("utf-8"))
    assert native is not None
    if len(text) >= 3:
        python = _mask(possible_kinds(text)) | (ENCODED_BIT if may_be_encoded(text) else 0)
        assert native & python == python  # a superset of detectors.py's own prefilter ...
        if text.isascii():
            assert native == python  # ... and the same one on ASCII
    if native == 0:
        assert Detectors().scan(text) is None  # ... so nothing it clears holds anything


@needs_native
@pytest.mark.parametrize("text", ["1:" * 40_000, "a" * 65_534 + "é" + "1.2.3.4" * 3, "-" * 70_000 + "x:y",
                                  "é" * 33_000 + "12345678901234", "x" * 65_535 + "a@b.c"])
def test_prefilter_counts_past_its_chunk_of_64_kib(text: str) -> None:
    """The prefilter counts digits, colons, dots and dashes in 16-bit lanes flushed every 64 KiB (and at a
    multi-byte character that crosses the boundary): long values give detectors.py's own answer."""
    python = _mask(possible_kinds(text)) | (ENCODED_BIT if may_be_encoded(text) else 0)
    native = NATIVE.possible_kinds(text.encode("utf-8"))
    assert native & python == python and (not text.isascii() or native == python)


@needs_native
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12))
def test_prefilter_utf8_check_matches_python(data: bytes) -> None:
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert (NATIVE.possible_kinds(data) is not None) == valid


def _pseudonym_request(values: list[str]) -> bytes:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for value in values:
        spans.add(name="s").attributes.append(kv("user.id", value))
    return req.SerializeToString()


@needs_native
def test_pseudonyms_are_openssls_hmac() -> None:
    """No hand-written crypto: the scanner's pseudonyms are OpenSSL's HMAC-SHA256 (libcrypto, the library Python's
    hmac uses), equal to the standard library's and to the Python path's."""
    assert NATIVE.libcrypto, "libcrypto could not be loaded: pseudonyms take the slower Python fallback"
    pair = Pair(ACTIONS_RULES)
    rng = random.Random(3)
    values = [f"user-{rng.randrange(10**9)}" for _ in range(200)] + ["", "jürgen", "x" * 700]
    out = pair.check(_pseudonym_request(values + values[:50]))
    length = pair.native.redactor.pseudonymiser.length
    for value in values:
        assert ("u_" + hmac.digest(KEY.encode(), value.encode(), "sha256").hex()[:length]).encode() in out


@needs_native
def test_without_libcrypto_the_pseudonymiser_is_asked_once_per_value() -> None:
    """Where libcrypto cannot be loaded the scanner asks the Python pseudonymiser (hmac.digest), memoised."""
    code = """if True:
        import os, sys
        sys.path[:0] = os.environ["RECOHOP_TEST_PATHS"].split(os.pathsep)
        from processor.native import _redact
        assert not _redact.libcrypto
        from test_redaction_native import ACTIONS_RULES, NATIVE, Pair, _pseudonym_request
        from processor.redaction.native import NativeTraces
        pair = Pair(ACTIONS_RULES)
        p = pair.native.redactor.pseudonymiser
        asked, digest = [], p.digest
        p.digest = lambda v: asked.append(v) or digest(v)
        pair.native.native = NativeTraces(pair.native.redactor, NATIVE)
        out = pair.check(_pseudonym_request([f"user-{i % 3}" for i in range(60)]))
        assert sorted(asked) == [b"user-0", b"user-1", b"user-2"], asked
        assert b"user-1" not in out
    """
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "RECOHOP_REDACT_NO_LIBCRYPTO": "1",
           "RECOHOP_TEST_PATHS": os.pathsep.join([here, os.path.dirname(here)])}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


@needs_native
def test_scanner_is_collected_when_its_callbacks_refer_back_to_it() -> None:
    """The scanner holds Python callables, so it is a GC-tracked type: a cycle through it is collected."""

    class Owner:
        scanner: object = None

    def cycle() -> weakref.ref:
        owner = Owner()
        owner.scanner = NATIVE.Scanner(lambda key: owner and (0, 0, None), lambda kv: None, lambda text: None, 0,
                                       False, None, None, 0, 1, 8)
        assert gc.is_tracked(owner.scanner)
        return weakref.ref(owner)

    gone = cycle()
    gc.collect()
    assert gone() is None


@needs_native
def test_pseudonyms_and_ip_networks_equal_the_python_actions() -> None:
    pair = Pair(ACTIONS_RULES)
    rng = random.Random(9)
    ips = [f"{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
           for _ in range(50)] + ["010.001.002.003", "1.2.3.4 ", "256.1.1.1", "1.2.3", "::ffff:10.0.0.1"]
    users: list[object] = [f"u{rng.randrange(10**6)}" for _ in range(50)] + ["", "jürgen", 42, True, 1.5]
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for ip, user in zip(ips, users, strict=False):
        spans.add(name="s").attributes.extend([kv("client.address", ip), kv("user.id", user)])
    spans.add(name="b").attributes.add(key="user.id").value.bytes_value = b"\xff\x00raw"
    pair.check(req.SerializeToString())


def test_kind_ids_follow_the_detector_kinds() -> None:
    """The C enum of kinds is in detectors.KINDS order (then the `encoded` prefilter bit); the hit counts are mapped
    back by it."""
    assert list(KIND_IDS) == list(KINDS)
    assert list(KINDS) == ["bearer", "jwt", "email", "iban", "card", "ipv6", "ipv4", "phone", "secret", "ssn", "mac",
                           "geo", "cookie", "custom"]


@needs_native
def test_a_value_no_generalisation_reads_costs_that_value_only() -> None:
    """`"².1.1.1".isdigit()` is true and `int("²")` fails: the IP generalisation used to raise and the whole request
    was refused. Now such values become the kind's tag (a rule hit), on both paths alike."""
    pair = Pair(ACTIONS_RULES)
    poison = ["².1.1.1", "١.٢.٣.٤", "1.2.3.٤", "²³", "1e400"]
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for value in poison:
        spans.add(name="s").attributes.extend([kv("client.address", value), kv("user_age", value), kv("geo", value)])
    out = ExportTraceServiceRequest.FromString(pair.check(req.SerializeToString()))
    values = {(a.key, a.value.string_value) for s in out.resource_spans[0].scope_spans[0].spans for a in s.attributes}
    assert {v for k, v in values if k == "client.address"} == {"<ip>"}
    assert {v for k, v in values if k == "user_age"} == {"<age>"} and {v for k, v in values if k == "geo"} == {"<geo>"}


def test_a_generalisation_that_raises_writes_its_tag_and_counts() -> None:
    from processor.redaction.actions import Guarded

    def broken(value: object) -> str:
        raise ValueError("cannot read")

    guarded = Guarded(broken, "<ip>")
    assert guarded("anything") == "<ip>" and guarded(3) == "<ip>" and guarded.failures == 2
