"""Small PromQL builders shared by recording rules, alerts and panels, so the same question is asked one way."""

from __future__ import annotations


def selector(metric: str, *matchers: str) -> str:
    """`metric{m1,m2}` with empty matchers dropped (so callers can pass optional filters as "")."""
    kept = [m for m in matchers if m]
    return f"{metric}{{{','.join(kept)}}}" if kept else metric


def by(labels: tuple[str, ...] | list[str]) -> str:
    return f" by ({', '.join(labels)})" if labels else ""


def rate_sum(metric: str, window: str, labels: tuple[str, ...] = (), *matchers: str) -> str:
    return f"sum{by(labels)} (rate({selector(metric, *matchers)}[{window}]))"


def share(metric: str, flag: str, window: str, labels: tuple[str, ...] = (), *matchers: str) -> str:
    """Fraction of `metric`'s rate whose series match `flag`, per `labels`.

    The `or ... * 0` keeps the ratio at 0 (instead of absent) while no series with the flag exists yet, so a
    panel shows 0 % and an alert on it evaluates, rather than both seeing "no data".
    """
    flagged = f"rate({selector(metric, flag, *matchers)}[{window}])"
    every = f"rate({selector(metric, *matchers)}[{window}])"
    return f"sum{by(labels)} ({flagged} or {every} * 0) / sum{by(labels)} ({every})"


def quantile(q: float, bucket_expr: str, labels: tuple[str, ...] = ()) -> str:
    """`histogram_quantile` over an expression already yielding per-`le` bucket rates."""
    return f"histogram_quantile({q}, sum{by((*labels, 'le'))} ({bucket_expr}))"
