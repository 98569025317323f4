"""The limits stage's config, read like the OTel SDK's span limits (`OTEL_SPAN_*_LIMIT`).

Defaults: 128 attributes / events / links per span and per event or link, as the SDK. The SDK leaves the value
length unlimited; a hop cannot (one 10 MiB value is held by the sampling buffer and copied by every stage), so
values are cut at 64 KiB of UTF-8: room for any real stack trace or SQL statement. Lengths are in bytes, not
characters, because bytes are what costs memory; strings are cut at a UTF-8 character boundary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from processor.config_node import Node

NS = 1_000_000_000
KEYS = ("max_attributes_per_span", "max_attribute_value_length", "max_events_per_span", "max_links_per_span",
        "max_attributes_per_event", "max_attributes_per_link", "max_attributes_per_resource",
        "max_attributes_per_log_record", "max_age", "max_future")


@dataclass(frozen=True)
class Limits:
    max_attributes_per_span: int = 128
    max_attribute_value_length: int = 64 << 10
    max_events_per_span: int = 128
    max_links_per_span: int = 128
    max_attributes_per_event: int = 128
    max_attributes_per_link: int = 128
    # Resource and instrumentation-scope attributes.
    max_attributes_per_resource: int = 128
    max_attributes_per_log_record: int = 128
    # Spans starting before now - max_age or starting/ending after now + max_future are passed on, counted.
    max_age: float = 30 * 86400.0
    max_future: float = 3600.0

    def native_tuple(self) -> tuple[int, ...]:
        """The limits in the order `_limits.scan` takes them."""
        return (self.max_attributes_per_span, self.max_attribute_value_length, self.max_events_per_span,
                self.max_links_per_span, self.max_attributes_per_event, self.max_attributes_per_link,
                self.max_attributes_per_resource)

    def time_window(self, now_ns: int | None = None) -> tuple[int, int]:
        """(min_ns, max_ns): plausible span times now, clamped to what fixed64 holds."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        low = max(0, now_ns - int(self.max_age * NS))
        high = min((1 << 64) - 1, now_ns + int(self.max_future * NS))
        return low, high


def read_limits(node: Node) -> Limits:
    d = Limits()
    return Limits(
        max_attributes_per_span=node.int("max_attributes_per_span", d.max_attributes_per_span, minimum=0),
        max_attribute_value_length=node.size("max_attribute_value_length", d.max_attribute_value_length),
        max_events_per_span=node.int("max_events_per_span", d.max_events_per_span, minimum=0),
        max_links_per_span=node.int("max_links_per_span", d.max_links_per_span, minimum=0),
        max_attributes_per_event=node.int("max_attributes_per_event", d.max_attributes_per_event, minimum=0),
        max_attributes_per_link=node.int("max_attributes_per_link", d.max_attributes_per_link, minimum=0),
        max_attributes_per_resource=node.int("max_attributes_per_resource", d.max_attributes_per_resource,
                                             minimum=0),
        max_attributes_per_log_record=node.int("max_attributes_per_log_record", d.max_attributes_per_log_record,
                                               minimum=0),
        max_age=node.duration("max_age", d.max_age),
        max_future=node.duration("max_future", d.max_future),
    )
