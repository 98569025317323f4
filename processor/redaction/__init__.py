"""PII redaction: key rules (rules.py), value detectors (detectors.py), keyed pseudonyms (pseudonym.py),
generalisations (actions.py), and two tiers for traces: the C pass over serialized requests that the stage uses
when it is built (native.py, processor/native/_redact.c), and the walk over OTLP messages (redactor.py), its
fallback and the reference the differential tests compare it with. Metrics and logs take the message walk.
The stage itself is `processor/stages/redaction.py`; `python -m bench.redaction_stage` measures it."""
