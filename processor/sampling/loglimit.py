"""Rate limits for log records without a trace id (they pass the sampler, but a chatty service must not
flood the next hop): one token bucket per configured severity band, refilled from the stage clock."""

from __future__ import annotations

from processor.config_node import Node
from processor.sampling.policies.log_severity import SEVERITIES

# Band of a SeverityNumber: TRACE 1-4, DEBUG 5-8, INFO 9-12, WARN 13-16, ERROR 17-20, FATAL 21-24; 0 = unset.
BANDS = ("UNSPECIFIED", *SEVERITIES)


def band(severity_number: int) -> str:
    return BANDS[0] if severity_number <= 0 else BANDS[min(6, (severity_number - 1) // 4 + 1)]


class UntracedLogLimits:
    def __init__(self, per_second: dict[str, float]) -> None:
        self.rate = per_second
        self.tokens = dict(per_second)
        self.last: float | None = None

    def allow(self, severity_number: int, now: float) -> bool:
        name = band(severity_number)
        rate = self.rate.get(name)
        if rate is None:
            return True
        if self.last is not None and now > self.last:
            elapsed = now - self.last
            for key, r in self.rate.items():
                self.tokens[key] = min(r, self.tokens[key] + elapsed * r)
        self.last = now
        if self.tokens[name] >= 1:
            self.tokens[name] -= 1
            return True
        return False


def read_limits(node: Node, key: str) -> UntracedLogLimits | None:
    """`untraced_logs_per_second: {DEBUG: 10, INFO: 200}`: bands not listed are not limited."""
    if node.raw(key) is None:
        return None
    child = node.child(key)
    limits = {}
    for name in list(child.data):
        if name not in BANDS:
            raise child.error(name, "a severity band: " + ", ".join(BANDS))
        limits[name] = child.float(name, minimum=0)
    child.done()
    return UntracedLogLimits(limits)
