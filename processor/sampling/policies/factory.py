"""Config -> policy: the one switch from a policy's `type` to the module that builds it."""

from __future__ import annotations

from collections.abc import Callable

from processor.config_node import Node
from processor.sampling.policies import (
    always,
    attribute,
    composite,
    drop,
    latency,
    log_severity,
    probabilistic,
    rate_limit,
    span_count,
    status_code,
)
from processor.sampling.policies.base import Policy

BUILDERS: dict[str, Callable[[Node, str], Policy]] = {
    "always": always.build,
    "and": composite.build_and,
    "attribute": attribute.build,
    "drop": drop.build,
    "latency": latency.build,
    "log_severity": log_severity.build,
    "not": composite.build_not,
    "probabilistic": probabilistic.build,
    "rate_limit": rate_limit.build,
    "span_count": span_count.build,
    "status_code": status_code.build,
}


def build_policy(node: Node, default_name: str) -> Policy:
    """Build one policy from its mapping; unknown keys are errors (they name file, path and key)."""
    name = node.str("name", default_name)
    kind = node.str("type", choices=tuple(sorted(BUILDERS)))
    policy = BUILDERS[kind](node, name)
    node.done()
    return policy
