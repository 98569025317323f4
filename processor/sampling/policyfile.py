"""The policy file: `policies:` a list of named policies, read through `Node` so every error names the file,
the policy (by index and name) and the key.

    policies:
      - name: errors
        type: status_code
      - name: rest
        type: probabilistic
        percentage: 1
"""

from __future__ import annotations

from pathlib import Path

from processor.assets import builtin_file
from processor.config_node import ConfigError, Node
from processor.sampling.policies.factory import build_policy
from processor.sampling.policies.policyset import NO_MATCH, PolicySet

DEFAULT_POLICY_FILE = builtin_file("policies/default.yaml")


def parse_policies(root: Node) -> PolicySet:
    policies = []
    seen: set[str] = set()
    for i, node in enumerate(root.children("policies")):
        if node.raw("name") is None:
            raise ConfigError(root.file, node.path, "a policy with a 'name' (used in metrics and `sampling.policy`)")
        name = node.str("name")
        where = f"{node.path} ({name})"
        node.path = where  # errors inside this policy name it
        if name in seen or name == NO_MATCH:
            raise ConfigError(root.file, f"{where}.name", f"a unique policy name other than '{NO_MATCH}'", name)
        seen.add(name)
        policies.append(build_policy(node, name))
        del i
    if not policies:
        raise root.error("policies", "a non-empty list of policies")
    root.done()
    return PolicySet(policies)


def load_policy_file(path: str | Path) -> PolicySet:
    return parse_policies(Node.from_file(path))
