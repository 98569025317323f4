"""Config -> policy: the one switch from a policy's `type` to the module that builds it. Composites (`and`,
`not`, `drop`) are handed `build_policy` for their parts, so no policy module imports the factory."""

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
    "and": lambda node, name: composite.build_and(node, name, build_policy),
    "attribute": attribute.build,
    "drop": lambda node, name: drop.build(node, name, build_policy),
    "latency": latency.build,
    "log_severity": log_severity.build,
    "not": lambda node, name: composite.build_not(node, name, build_policy),
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
