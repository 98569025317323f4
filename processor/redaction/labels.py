"""Label values on the hop's /metrics through the value detectors (issue 19: derived metrics take span names and
attribute values as labels, and the cardinality self-metrics take metric names; whatever a detector would redact
in a trace must not reach /metrics as a label). Applied where labels are written (at scrape time or once per new
series), so the cost is per distinct label value, cached by the detectors."""

from __future__ import annotations

from collections.abc import Mapping

from processor.redaction.detectors import Detectors

_DETECTORS = Detectors()


def redact_label(value: str) -> str:
    """`value` with every detector hit replaced by its tag (the same tags as in traces)."""
    found = _DETECTORS.scan(value)
    return value if found is None else found[0]


def redact_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {name: redact_label(value) for name, value in labels.items()}
