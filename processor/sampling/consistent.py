"""OpenTelemetry consistent probability sampling: decide from the trace id's randomness, never a coin flip.

The randomness R is the trace id's low 56 bits (W3C trace-context level 2 random flag); a trace is kept when
R >= T, the rejection threshold T = (1 - p) * 2^56. Every hop (and the SDK's own consistent sampler) with the
same p keeps the same traces. The threshold travels in the span's tracestate as `ot=th:<hex>` so a backend
can compute adjusted counts (1/p).
"""

from __future__ import annotations

from fractions import Fraction

MAX_THRESHOLD = 1 << 56


def rejection_threshold(percentage: float) -> int:
    """T for a keep percentage in [0, 100], rounded to the nearest of 2^56 steps."""
    p = Fraction(str(percentage)) / 100
    return round((1 - p) * MAX_THRESHOLD)


def encode_th(threshold: int) -> str:
    """The `th` value: 14 hex digits with trailing zeros removed ("0" keeps everything)."""
    if threshold <= 0:
        return "0"
    return f"{threshold:014x}".rstrip("0")


def _decode_th(th: str) -> int:
    try:
        return int(th.ljust(14, "0")[:14], 16)
    except ValueError:
        return -1


def randomness(trace_id: bytes) -> int:
    """The low 56 bits of a 16-byte trace id."""
    return int.from_bytes(trace_id[9:16], "big")


def keeps(trace_id: bytes, threshold: int) -> bool:
    return int.from_bytes(trace_id[9:16], "big") >= threshold


def with_threshold(tracestate: str, th: str) -> str:
    """`tracestate` with the `ot` member's `th` sub-key set (other `ot` sub-keys and vendors kept, `ot` first).
    An existing, larger threshold (a more selective upstream sampler) is kept: the effective threshold of two
    consistent samplers in a row is the larger one."""
    members = [m.strip() for m in tracestate.split(",") if m.strip()] if tracestate else []
    ot_parts: list[str] = []
    others: list[str] = []
    for member in members:
        if member.startswith("ot="):
            parts = [p for p in member[3:].split(";") if p]
            ot_parts = [p for p in parts if not p.startswith("th:")]
            earlier = [p[3:] for p in parts if p.startswith("th:")]
            if earlier and _decode_th(earlier[0]) > _decode_th(th):
                th = earlier[0]  # sampled more selectively upstream (e.g. the SDK): that threshold holds
        else:
            others.append(member)
    ot = "ot=" + ";".join([f"th:{th}", *ot_parts])
    return ",".join([ot, *others])
