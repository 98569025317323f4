"""Tail-based sampling internals: the trace buffer (`buffer`), when a trace is ready (`decide`), the decision
cache (`cache`), consistent probability (`consistent`), policies (`policies/`) and the policy file (`policyfile`).
The stage that wires them into the pipeline is `processor/stages/tail_sampling.py`."""
