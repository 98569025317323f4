"""A fixed amount of redaction work for instruction counting, which the load of a shared machine does not move:

    valgrind --tool=callgrind --toggle-collect=Scanner_redact python3.11 -m bench.redaction_driver 3
    valgrind --tool=callgrind --toggle-collect=Scanner_redact python3.11 -m bench.redaction_driver 1

The difference of the two totals is two warm rounds (memo filled) of the default rules' C scanner over
`bench.workload.generate(6)` (4,800 spans a round). Run it with the real interpreter, not a pyenv shim script.
"""

from __future__ import annotations

import os
import sys

from prometheus_client import CollectorRegistry

from bench.workload import generate
from processor.config_node import Node
from processor.stages.base import StageContext
from processor.stages.redaction import RedactionStage, build


def main(rounds: int) -> None:
    os.environ.setdefault("RECOHOP_PSEUDONYM_KEY", "driver-key-0123456789abcdef0123")
    stage = build(Node({"type": "redaction"}, "<driver>"), StageContext(registry=CollectorRegistry()))
    assert isinstance(stage, RedactionStage) and stage.native is not None, "the native scanner is not built"
    requests = generate(6).requests
    for _ in range(rounds):
        for raw in requests:
            stage.native.redact(raw)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
