"""`log_severity`: a log record of the trace at or above a severity (default ERROR) is an error signal."""

from __future__ import annotations

from processor.config_node import Node
from processor.sampling.policies.base import Policy, TraceView
from processor.sampling.policies.batch import Batch, BatchLayout

# OTLP SeverityNumber at the start of each named range.
SEVERITIES = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}


class LogSeverity(Policy):
    kind = "log_severity"

    def __init__(self, name: str, minimum: int) -> None:
        super().__init__(name)
        self.minimum = minimum

    def matches(self, trace: TraceView, now: float) -> bool:
        return trace.max_severity >= self.minimum

    def batch(self, layout: BatchLayout, now: float) -> Batch:
        minimum = self.minimum
        return lambda f, rows: f.recs["max_severity"][rows] >= minimum


def severity_number(node: Node, key: str, default: str) -> int:
    return SEVERITIES[node.str(key, default, choices=tuple(SEVERITIES))]


def build(node: Node, name: str) -> Policy:
    return LogSeverity(name, severity_number(node, "min_severity", "ERROR"))
