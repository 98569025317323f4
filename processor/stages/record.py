"""Record stage: writes every request it sees to a capture file (OTLP JSON lines, the file sink's format)
for `recohop replay`. `recohop serve --record FILE` puts it right after redaction, so captures never hold
raw PII."""

from __future__ import annotations

from processor.config_node import Node
from processor.filesink import FileSink
from processor.stages.base import LogsRequest, MetricsRequest, Stage, StageContext, TracesRequest


class RecordStage(Stage):
    name = "record"
    mutates = False

    def __init__(self, sink: FileSink) -> None:
        self.sink = sink

    def on_traces(self, request: TracesRequest) -> list[TracesRequest]:
        self.sink.write_message(request)
        return [request]

    def on_metrics(self, request: MetricsRequest) -> list[MetricsRequest]:
        self.sink.write_message(request)
        return [request]

    def on_logs(self, request: LogsRequest) -> list[LogsRequest]:
        self.sink.write_message(request)
        return [request]

    def shutdown(self) -> None:
        self.sink.close()
        return None


def build(node: Node, ctx: StageContext) -> Stage:
    path = node.path_value("path")
    if path is None:
        raise node.error("path", "the capture file to write (required)")
    return RecordStage(FileSink(path, node.size("max_bytes", "1GiB"), node.int("backups", 0, minimum=0)))
