"""The traces pass in C (processor/native/_redact.c), with the Python callbacks it asks when C cannot decide.

Why: the Python message walk (redactor.py) costs several microseconds per span, most of it protobuf parsing
and per-attribute Python work. The C scanner reads the serialized request once and asks Python
only about what it has not seen: each distinct attribute key once (its rule, by `RuleSet.lookup`), values the
detector prefilter cannot clear (the same `Detectors.scan`), and attributes whose rule needs Python (through
`Redactor.keyvalue` on a parsed KeyValue, exactly as the message walk does). Answers are memoised in C by the
bytes asked about (bounded). Drops, masks, keyed pseudonyms (HMAC-SHA256 by OpenSSL's libcrypto, called from C;
`Pseudonymiser.digest`, memoised in C, where libcrypto cannot be loaded) and IPv4 generalisation are done in C with
the same results as actions.py / pseudonym.py (tests compare them). Hit counts come back per request and go into
the Redactor's counters, so the stage's self-metrics are unchanged.
"""

from __future__ import annotations

from types import ModuleType

from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from processor import native
from processor.native.readahead import MISSING, ReadAhead
from processor.redaction.actions import generalise_ip
from processor.redaction.detectors import KINDS
from processor.redaction.redactor import DROP, Redactor

# key_action codes (the A_* enum of _redact.c)
A_CLEAN, A_SCAN, A_DROP, A_MASK, A_PSEUDO, A_GEN, A_GEN_IP, A_OTHER = range(8)

KIND_IDS = {kind: i for i, kind in enumerate(KINDS)}
ENCODED_BIT = 1 << len(KINDS)  # the prefilter's "may hold an encoded form" bit (detectors.may_be_encoded)

Outcome = tuple[bytes | None, int, tuple[int, ...], tuple[int, ...]]


def kinds_mask(kinds: tuple[str, ...]) -> int:
    mask = 0
    for kind in kinds:
        mask |= 1 << KIND_IDS[kind]
    return mask


class NativeTraces:
    """One stage's C scanner; `redact(raw)` is `Redactor.traces` on bytes (None: use the Python path)."""

    MEMO_MAX = 65536

    def __init__(self, redactor: Redactor, module: ModuleType, memo_max: int | None = None) -> None:
        self.redactor = redactor
        rules = redactor.rules
        names = [rule.name for _, rule in rules.rules] + ([rules.otherwise.name] if rules.otherwise else [])
        self.rule_names = list(dict.fromkeys(names)) or ["<none>"]
        rule_ids = {name: i for i, name in enumerate(self.rule_names)}
        # A probe shares rules, detectors and pseudonymiser; its counters give one KeyValue's hits.
        probe = Redactor(rules, redactor.pseudonymiser)
        probe.detectors = redactor.detectors
        probe.scan = redactor.scan
        scan = redactor.scan

        def key_action(key: bytes) -> tuple[int, int, object]:
            try:
                text = key.decode("utf-8")
            except UnicodeDecodeError:
                return A_OTHER, 0, None  # kv_outcome then fails to parse it and the Python path decides
            if scan is not None and scan(text) is not None:
                return A_OTHER, 0, None  # the key itself holds something: Redactor.keyvalue rewrites it
            rule = rules.lookup(text)
            if rule is None:
                return A_SCAN, 0, None
            if rule.action == "keep":
                return (A_SCAN if rule.scan else A_CLEAN), 0, None
            rule_id = rule_ids[rule.name]
            if rule.action == "drop":
                return A_DROP, rule_id, None
            if rule.action == "mask":
                return A_MASK, rule_id, rule.mask_with.encode("utf-8")
            if rule.action == "pseudonymise":
                return A_PSEUDO, rule_id, rule.prefix.encode("utf-8")
            if rule.generalise is not None:
                return (A_GEN_IP if rule.generalise.inner is generalise_ip else A_GEN), rule_id, rule.generalise
            return A_OTHER, rule_id, None

        def kv_outcome(raw: bytes) -> Outcome | bool | None:
            try:
                message = KeyValue.FromString(raw)
            except DecodeError:
                return False
            changed = probe.keyvalue(message)
            hits = (tuple(rule_ids[name] for name in probe.rule_hits.elements()),
                    tuple(KIND_IDS[kind] for kind in probe.detector_hits.elements()))
            probe.rule_hits.clear()
            probe.detector_hits.clear()
            if not changed:
                return None
            if changed == DROP:
                return None, 1, *hits
            return message.SerializeToString(), changed, *hits

        def text_outcome(raw: bytes) -> tuple[bytes, tuple[int, ...]] | bool | None:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return False
            found = scan(text) if scan is not None else None
            if found is None:
                return None
            return found[0].encode("utf-8"), tuple(KIND_IDS[kind] for kind in found[1])

        pseudonymiser = redactor.pseudonymiser
        self.scanner = module.Scanner(
            key_action, kv_outcome, text_outcome,
            (kinds_mask(redactor.detectors.kinds) | (ENCODED_BIT if redactor.detectors.decode else 0))
            if redactor.detectors.enabled else 0,
            bool(redactor.summary),
            pseudonymiser.digest if pseudonymiser is not None else None,
            pseudonymiser.key if pseudonymiser is not None else None,
            pseudonymiser.length if pseudonymiser is not None else 0,
            len(self.rule_names), memo_max or self.MEMO_MAX)

        self._ahead = ReadAhead()  # the scanner's answer for a request `prepare` walked

    @classmethod
    def load(cls, redactor: Redactor) -> NativeTraces | None:
        """The scanner, or None when the native module is not built or RECOHOP_NATIVE=0."""
        module = native.load("redact")
        return cls(redactor, module) if module is not None else None

    def prepare(self, raw: bytes) -> None:
        """The scanner's walk of `raw` on this thread, ahead of `redact` of the same bytes: called without the
        stage's lock, it waits for the scanner (one walk at a time) and for the GIL holding no Python lock, so
        other requests go through the stage meanwhile. A walk that raises is dropped: `redact` walks again and
        fails there as it would."""
        self._ahead.keep(raw, self.scanner.redact)

    def redact(self, raw: bytes) -> bytes | None:
        """The redacted request (`raw` itself when nothing changed), or None when the scanner met bytes it
        does not handle (the caller then takes the Python path, which counts the hits itself). The counters
        are the caller's to guard (the stage's lock)."""
        found = self._ahead.take(raw)
        if found is MISSING:
            found = self.scanner.redact(raw)
        if found is None:
            return None
        out, spans_touched, rule_counts, detector_counts = found
        r = self.redactor
        if rule_counts is not None:
            for name, n in zip(self.rule_names, rule_counts, strict=True):
                if n:
                    r.rule_hits[name] += n
        if detector_counts is not None:
            for kind, n in zip(KINDS, detector_counts, strict=True):
                if n:
                    r.detector_hits[kind] += n
        r.spans_touched += spans_touched
        return out
