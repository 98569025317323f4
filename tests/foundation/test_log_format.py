"""`telemetry.log_format`: json is one object per line with time, level, logger, message and fields, for a
log collector; text stays a line a person reads. Neither carries attribute values."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sdk_clients import send_spans

from processor.config import ConfigError, parse_config
from processor.config_node import Node
from processor.logformat import JsonFormatter, setup_logging
from processor.signals import METHOD_PATHS, REQUEST_TYPES


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_have_time_level_logger_message_and_fields(restore_root_logging) -> None:
    stream = io.StringIO()
    setup_logging("debug", "json", stream)
    log = logging.getLogger("recohop.test")
    log.info("listening on %s", "127.0.0.1:4317", extra={"grpc_endpoint": "127.0.0.1:4317", "stages": ["limits"]})
    log.warning("two\nlines")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("a stage failed (%s)", "ValueError")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # one object per record, newlines inside escaped
    first, second, third = (json.loads(line) for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["level"] == "info" and first["logger"] == "recohop.test"
    assert first["message"] == "listening on 127.0.0.1:4317"
    assert first["fields"] == {"grpc_endpoint": "127.0.0.1:4317", "stages": ["limits"]}
    assert second["message"] == "two\nlines" and "fields" not in second and second["level"] == "warning"
    assert third["level"] == "error" and third["error"]["type"] == "ValueError"
    assert "Traceback" in third["error"]["stack"]


def test_fields_that_json_cannot_encode_are_written_as_text() -> None:
    record = logging.LogRecord("recohop", logging.INFO, __file__, 1, "m", None, None)
    record.path = Path("/var/lib/recohop")
    assert json.loads(JsonFormatter().format(record))["fields"] == {"path": "/var/lib/recohop"}


def test_text_format_and_setup_replaces_earlier_handlers(restore_root_logging) -> None:
    stream = io.StringIO()
    setup_logging("info", "json", io.StringIO())
    setup_logging("info", "text", stream)
    logging.getLogger("recohop").info("hello")
    logging.getLogger("recohop").debug("not at info")
    assert len(logging.getLogger().handlers) == 1
    assert re.fullmatch(r"\S+ \S+ INFO recohop: hello\n", stream.getvalue())
    with pytest.raises(ValueError, match="log format"):
        setup_logging("info", "xml")


def test_config_key() -> None:
    def parse(telemetry: dict) -> object:
        return parse_config(Node({"telemetry": telemetry}, "hop.yaml")).telemetry

    assert parse({}).log_format == "text"
    assert parse({"log_format": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match=r"hop.yaml: telemetry.log_format: expected one of text, json, got 'xml'"):
        parse({"log_format": "xml"})


def test_a_json_logging_hop_writes_only_json_lines_and_no_attribute_values(start_hop, downstream) -> None:
    secret = "jane.doe@example.com"
    hop = start_hop(f"exporter: {{endpoint: {downstream.endpoint}}}\n"
                    "telemetry: {log_format: json, log_level: debug}\n")
    sent = send_spans(hop.endpoint, 3)
    downstream.wait_for_spans(len(sent))
    request = REQUEST_TYPES["traces"]()
    span = request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    span.attributes.add(key="user.email").value.string_value = secret
    with grpc.insecure_channel(hop.endpoint) as channel:
        export = channel.unary_unary(METHOD_PATHS["traces"])
        export(request.SerializeToString(), timeout=10)
        with pytest.raises(grpc.RpcError):  # a malformed request carrying the secret
            export(b"\x0a\xff" + secret.encode(), timeout=10)
    downstream.wait_for_spans(len(sent) + 1)
    assert hop.terminate() == 0
    lines = [line for line in hop.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert any(entry["message"].startswith("recohop listening") for entry in entries)
    assert any(entry["message"].startswith("stopping") for entry in entries)
    assert secret not in hop.log()
