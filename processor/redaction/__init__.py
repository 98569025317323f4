"""PII redaction: key rules (rules.py), value detectors (detectors.py), keyed pseudonyms (pseudonym.py),
generalisations (actions.py), the walk over OTLP messages (redactor.py), the byte-level traces fast path
that gives the same result while touching only spans that hold something (fastpath.py), and the C pass
over serialized requests that the stage uses when it is built (native.py, processor/native/_redact.c).
The stage itself is `processor/stages/redaction.py`; `python -m bench.redaction_stage` measures it."""
