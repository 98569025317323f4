"""otelcol's tail_sampling processor (v0.158) -> a recohop policy file and the tail_sampling stage's settings.

otelcol keeps a trace when any policy samples it and no `drop` policy matches; recohop drops on any `drop`, else
keeps on the first matching policy. For the stateless policies both keep the same set, so the policies are
written in otelcol's order. Each otelcol policy becomes one or more recohop policies: a policy is translated
into a list of alternatives (the trace matches if any does), because an OTTL `or`, or a `not` / `and` over
such a list, needs several recohop policies at the top level, where recohop ORs them.

Semantics that shape the translation (from the v0.158 sources):
- string/numeric/boolean_attribute look at resource and span attributes (recohop `scope: any`);
  `invert_match` samples when no resource and no span matches, which is recohop's `not`.
- status_code tests span status only; recohop's also counts `exception` events unless told not to.
- latency compares whole milliseconds (`duration.Milliseconds() > threshold_ms`), so the recohop threshold is
  the largest duration otelcol does not keep.
- numeric_attribute's min_value / max_value of 0 mean "not set".
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from processor.config_node import Node
from processor.migrate.ottl import OttlRefused, span_condition_policies
from processor.migrate.source import Component, Findings, Refused, Section, seconds_text
from processor.sampling.policies import latency as recohop_latency

MAX_ALTERNATIVES = 16  # an and/drop over ORs multiplies out; beyond this the file would be unreadable

SHARED_TYPES = ("always_sample", "latency", "numeric_attribute", "probabilistic", "status_code", "string_attribute",
                "rate_limiting", "bytes_limiting", "span_count", "trace_state", "boolean_attribute",
                "ottl_condition", "trace_flags")
BLOCKS = ("latency", "numeric_attribute", "probabilistic", "status_code", "string_attribute", "rate_limiting",
          "bytes_limiting", "span_count", "trace_state", "boolean_attribute", "ottl_condition", "composite", "and",
          "not", "drop")
NO_EQUIVALENT = {
    "trace_state": "recohop has no policy on the W3C tracestate (a `trace_state` policy kind with key/values "
                   "would be needed)",
    "trace_flags": "recohop has no policy on the trace flags' sampled bit",
    "bytes_limiting": "recohop's rate_limit counts spans, not bytes (a bytes-per-second budget would be needed)",
}
Policy = dict[str, Any]


@dataclass
class ImportedPolicies:
    """The policy file's policies (named, in order), a comment block per policy, and the stage settings."""

    policies: list[Policy] = field(default_factory=list)
    comments: list[list[str]] = field(default_factory=list)
    stage: dict[str, Any] = field(default_factory=dict)


def _not(alternatives: list[Policy]) -> Policy:
    """NOT (a OR b ...) = (NOT a) AND (NOT b) ...: one recohop policy."""
    nots = [{"type": "not", "policy": alt} for alt in alternatives]
    return nots[0] if len(nots) == 1 else {"type": "and", "policies": nots}


def _and(parts: list[list[Policy]], path: str) -> list[Policy]:
    """AND over lists of alternatives, multiplied out into alternatives of `and` policies."""
    count = 1
    for alternatives in parts:
        count *= len(alternatives)
    if count > MAX_ALTERNATIVES:
        raise Refused(path, f"multiplies out into {count} recohop policies (an `and` over OTTL `or`s); "
                            f"at most {MAX_ALTERNATIVES} are written")
    return [combo[0] if len(combo) == 1 else {"type": "and", "policies": list(combo)}
            for combo in itertools.product(*parts)]


LATENCY_EXPLAINED = ("latency: otelcol keeps a trace when its duration in whole milliseconds exceeds threshold_ms "
                     "(so from threshold_ms + 1 ms on); recohop keeps a duration above its threshold: N.999999ms "
                     "is the same cut")


def _uses_latency(policy: Any) -> bool:
    if isinstance(policy, dict):
        return policy.get("type") == "latency" or any(_uses_latency(v) for v in policy.values())
    if isinstance(policy, list):
        return any(_uses_latency(v) for v in policy)
    return False


def latency_threshold(threshold_ms: int) -> str:
    """The recohop threshold that keeps exactly what otelcol's `threshold_ms` keeps: otelcol keeps
    floor(duration in ms) > threshold_ms, i.e. duration >= threshold_ms + 1 ms; recohop keeps duration > T."""
    target_ns = (threshold_ms + 1) * 1_000_000 - 1
    for text in (f"{threshold_ms}.999999ms", f"{threshold_ms}.9999995ms", f"{threshold_ms}.99999999ms"):
        built = recohop_latency.build(Node({"threshold": text}, "<import>"), "check")
        if built.threshold_ns == target_ns:  # type: ignore[attr-defined]
            return text
    return f"{threshold_ms + 1}ms"  # pragma: no cover - float parsing gave no exact form


def _regex(pattern: str, path: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise Refused(path, f"the pattern is not a regular expression recohop (Python re) reads ({exc}); "
                            "rewrite it in the syntax both share") from None


class _Translator:
    def __init__(self, findings: Findings) -> None:
        self.findings = findings

    def note(self, path: str, text: str) -> None:
        self.findings.note(path, text)

    # -------------------------------------------------------------- one policy -> alternatives

    def policy(self, sec: Section, allowed: tuple[str, ...]) -> list[Policy]:
        sec.get("name")
        ptype = sec.str("type")
        if ptype not in allowed:
            raise Refused(sec.at("type"), f"'{ptype}' is not a policy type otelcol v0.158 accepts here (it accepts "
                                          + ", ".join(allowed) + ")")
        for other in BLOCKS:
            if other != ptype and sec.has(other):
                sec.get(other)
                self.note(sec.at(other), f"ignored, as otelcol ignores it (the policy's type is {ptype})")
        if ptype in NO_EQUIVALENT:
            raise Refused(sec.at("type"), f"{ptype}: {NO_EQUIVALENT[ptype]}")
        result: list[Policy]
        if ptype == "always_sample":
            result = [{"type": "always"}]
        else:
            block = sec.section(ptype)
            if ptype == "and":
                result = self.and_(block, "and_sub_policy")
            elif ptype == "drop":
                result = [{"type": "drop", "policy": alt} for alt in self.and_(block, "drop_sub_policy")]
            elif ptype == "not":
                result = [_not(self.policy(block.section("not_sub_policy"), SHARED_TYPES))]
            else:
                result = getattr(self, ptype)(block)
            block.refuse_leftover(f"tail_sampling {ptype} policy")
        sec.refuse_leftover("tail_sampling policy")
        return result

    def latency(self, b: Section) -> list[Policy]:
        low, high = b.int("threshold_ms"), b.int("upper_threshold_ms")
        lower = {"type": "latency", "threshold": latency_threshold(low)}
        if high <= 0:
            return [lower]
        self.note(b.at("upper_threshold_ms"), "recohop tests the whole trace's duration against both bounds; otelcol "
                                              "tests the running duration span by span, so it can also keep a trace "
                                              "longer than the upper bound when its first spans fall in range")
        return [{"type": "and", "policies": [lower, {"type": "not", "policy": {
            "type": "latency", "threshold": latency_threshold(high)}}]}]

    @staticmethod
    def _invert(b: Section, policy: Policy) -> list[Policy]:
        return [{"type": "not", "policy": policy}] if b.bool("invert_match") else [policy]

    def numeric_attribute(self, b: Section) -> list[Policy]:
        key, low, high = b.str("key"), b.int("min_value"), b.int("max_value")
        if low == 0 and high == 0:
            raise Refused(b.path, "neither min_value nor max_value is set (otelcol reads 0 as unset and builds no "
                                  "policy)")
        policy: Policy = {"type": "attribute", "key": key}
        if low != 0:
            policy["min"] = low
        if high != 0:
            policy["max"] = high
        self.note(b.at("key"), "otelcol reads the value as an integer (a double reads as 0); recohop compares "
                               "doubles by their value")
        return self._invert(b, policy)

    def string_attribute(self, b: Section) -> list[Policy]:
        key = b.str("key")
        values = [v for v in b.str_list("values") if v != ""]
        regex = b.bool("enabled_regex_matching")
        if b.has("cache_max_size"):
            b.int("cache_max_size")
            self.note(b.at("cache_max_size"), "a cache size for regex results; recohop needs none")
        if not values:
            raise Refused(b.at("values"), "no non-empty value: otelcol's policy can never match")
        policy: Policy = {"type": "attribute", "key": key}
        if regex:
            for i, pattern in enumerate(values):
                _regex(pattern, f"{b.at('values')}[{i}]")
            policy["regex"] = values[0] if len(values) == 1 else "|".join(f"(?:{v})" for v in values)
        elif len(values) == 1:
            policy["value"] = values[0]
        else:
            policy["values"] = values
        return self._invert(b, policy)

    def boolean_attribute(self, b: Section) -> list[Policy]:
        value = b.bool("value")
        if not value:
            self.note(b.at("value"), "otelcol also matches a non-boolean value of the key (it reads as false); "
                                     "recohop matches the boolean false only")
        return self._invert(b, {"type": "attribute", "key": b.str("key"), "value": value})

    def probabilistic(self, b: Section) -> list[Policy]:
        percentage = min(max(b.number("sampling_percentage"), 0.0), 100.0)
        salt = b.str("hash_salt")
        self.note(b.path, "the same percentage, other traces: otelcol hashes the trace id with FNV-1a and a salt"
                          + (f" ('{salt}')" if salt else "") + ", recohop uses the trace id's own randomness "
                          "(consistent with W3C / SDK probability samplers); there is no salt")
        return [{"type": "probabilistic", "percentage": int(percentage) if percentage.is_integer() else percentage}]

    def rate_limiting(self, b: Section) -> list[Policy]:
        rate = b.int("spans_per_second")
        burst = b.int("burst_capacity")
        if rate <= 0:
            raise Refused(b.at("spans_per_second"), "a positive spans_per_second is needed")
        self.note(b.path, f"recohop's bucket holds one second of spans ({rate}); otelcol's holds "
                          f"{burst or 2 * rate}" + (" (burst_capacity)" if burst else " (2 x spans_per_second)")
                          + ". otelcol spends the budget on every trace it evaluates, recohop only on traces no "
                          "earlier policy kept; neither is consistent across instances")
        return [{"type": "rate_limit", "spans_per_second": rate}]

    def span_count(self, b: Section) -> list[Policy]:
        low, high = b.int("min_spans"), b.int("max_spans")
        if high and high < low:
            raise Refused(b.at("max_spans"), "max_spans below min_spans: otelcol's policy can never match")
        policy: Policy = {"type": "span_count", "min": max(low, 1)}  # a trace has at least one span
        if high:
            policy["max"] = high
        return [policy]

    def status_code(self, b: Section) -> list[Policy]:
        codes = set(b.str_list("status_codes"))
        if not codes:
            raise Refused(b.at("status_codes"), "no status code (otelcol refuses an empty list)")
        if codes != {"ERROR"}:
            others = ", ".join(sorted(codes - {"ERROR"}))
            raise Refused(b.at("status_codes"), f"recohop's status_code policy matches ERROR only ({others} would "
                                                "need a `codes:` setting on it)")
        return [{"type": "status_code", "exception_events": False}]

    def ottl_condition(self, b: Section) -> list[Policy]:
        b.str("error_mode", "propagate")
        if b.str_list("spanevent"):
            raise Refused(b.at("spanevent"), "recohop has no policy on span events (its status_code policy can "
                                             "count `exception` events, but not other event conditions)")
        conditions = b.str_list("span")
        if not conditions:
            raise Refused(b.path, "no span condition")
        out: list[Policy] = []
        for i, condition in enumerate(conditions):
            try:
                out.extend(span_condition_policies(condition))
            except OttlRefused as exc:
                raise Refused(f"{b.at('span')}[{i}]", str(exc)) from None
        return out

    def and_(self, b: Section, key: str) -> list[Policy]:
        subs = b.sections(key)
        if not subs:
            raise Refused(b.at(key), "no sub-policy")
        return _and([self.policy(sub, SHARED_TYPES + ("not",)) for sub in subs], b.path)

    # -------------------------------------------------------------- top level

    def top(self, sec: Section, name: str, out: ImportedPolicies, taken: set[str]) -> None:
        if sec.data.get("type") == "composite":
            named = self.composite(sec, name)
        else:
            alternatives = self.policy(sec, SHARED_TYPES + ("and", "not", "drop"))
            named = [(name if i == 0 else f"{name}.{i + 1}", alt) for i, alt in enumerate(alternatives)]
            if len(named) > 1:
                self.note(sec.path, f"an OR of {len(named)} conditions: written as {len(named)} policies "
                                    f"({', '.join(n for n, _ in named)}), kept if any matches")
        unique_names = []
        for policy_name, _ in named:
            unique = policy_name
            while unique in taken or unique == "none":
                unique += "_"
            if unique != policy_name:
                self.note(sec.path, f"written as '{unique}' (recohop policy names are unique, and 'none' names "
                                    "the no-match decision)")
            taken.add(unique)
            unique_names.append(unique)
        explain = [LATENCY_EXPLAINED] if any(_uses_latency(p) for _, p in named) else []
        comment = [f"from {sec.path}", *explain] + [f"note: {n.text}" if n.path == sec.path else
                                          f"note ({n.path[len(sec.path):].lstrip('.')}): {n.text}"
                                          for n in self.findings.notes_under(sec.path)]
        for i, (unique, (_, policy)) in enumerate(zip(unique_names, named, strict=True)):
            out.policies.append({"name": unique, **policy})
            out.comments.append(comment if i == 0 else [f"from {sec.path} (continued)"])

    def composite(self, sec: Section, name: str) -> list[tuple[str, Policy]]:
        sec.get("name")
        sec.get("type")
        b = sec.section("composite")
        total = b.int("max_total_spans_per_second")
        if b.str_list("policy_order"):
            self.note(b.at("policy_order"), "not used by otelcol v0.158 (it evaluates composite_sub_policy in the "
                                            "listed order), nor here")
        subs = b.sections("composite_sub_policy")
        allocation: dict[str, float] = {}
        for rate in b.sections("rate_allocation"):
            percent = rate.int("percent")
            allocation[rate.str("policy")] = percent / 100 * total if percent > 0 else total / max(len(subs), 1)
            rate.refuse_leftover("composite rate_allocation")
        b.refuse_leftover("tail_sampling composite policy")
        sec.refuse_leftover("tail_sampling policy")
        if not subs:
            raise Refused(b.at("composite_sub_policy"), "no sub-policy")
        earlier: list[Policy] = []
        named: list[tuple[str, Policy]] = []
        for i, sub in enumerate(subs):
            sub_name = str(sub.data.get("name") or i)
            alternatives = self.policy(sub, SHARED_TYPES + ("and",))
            if len(alternatives) != 1:
                raise Refused(sub.path, "a composite sub-policy that is an OR of several conditions would need "
                                        "one rate budget shared by several recohop policies")
            limit = min(allocation.get(sub_name, 0.0), float(total))
            if limit > 0:
                parts = [{"type": "not", "policy": p} for p in earlier] + [alternatives[0], {
                    "type": "rate_limit", "spans_per_second": int(limit) if limit.is_integer() else limit}]
                named.append((f"{name}/{sub_name}", {"type": "and", "policies": parts}))
            else:
                self.note(sub.path, "no rate allocated (otelcol gives it 0 spans per second): it keeps nothing, "
                                    "but still stops later sub-policies from keeping what it matches")
            earlier.append(alternatives[0])
        self.note(b.path, "each sub-policy becomes `and: [no earlier sub-policy, this one, rate_limit]` (otelcol "
                          "only tries the first sub-policy that matches); otelcol counts spans in fixed one-second "
                          "windows, recohop's rate_limit is a token bucket; neither is consistent across instances")
        if not named:
            raise Refused(b.at("rate_allocation"), "no sub-policy has a rate allocated: the composite keeps nothing")
        return named


def _timing(top: Section, out: ImportedPolicies, translator: _Translator) -> None:
    wait = top.duration_ns("decision_wait", 30 * 10**9)
    after_root = top.duration_ns("decision_wait_after_root_received")
    # otelcol decides `decision_wait` after a trace's first span (or decision_wait_after_root_received after its
    # root); recohop decides after its root (root_grace) or first span (decision_wait), whichever comes first.
    out.stage["decision_wait"] = seconds_text(wait)
    out.stage["root_grace"] = seconds_text(after_root if 0 < after_root < wait else wait)


def _sizes(top: Section, out: ImportedPolicies, translator: _Translator) -> None:
    out.stage["max_traces"] = top.int("num_traces", 50_000)
    if top.has("expected_new_traces_per_sec"):
        top.int("expected_new_traces_per_sec")
        translator.note(top.at("expected_new_traces_per_sec"), "an allocation hint; recohop needs none")
    top.bool("sample_on_first_match")  # recohop stops at the first keep anyway: the same kept set
    cache = top.section("decision_cache")
    size = cache.int("sampled_cache_size") + cache.int("non_sampled_cache_size")
    cache.refuse_leftover("tail_sampling decision_cache")
    if size > 0:
        out.stage["decision_cache_size"] = max(size, 2)


def _no_equivalent(top: Section) -> list[Refused]:
    """Stage settings recohop cannot honour, each refused on its own."""
    out = []
    checks = (
        ("block_on_overflow", lambda: top.bool("block_on_overflow"),
         "recohop never blocks its receiver on a full buffer: it decides the oldest traces early instead"),
        ("drop_pending_traces_on_shutdown", lambda: top.bool("drop_pending_traces_on_shutdown"),
         "recohop decides and sends every buffered trace on shutdown"),
        ("sampling_strategy", lambda: top.str("sampling_strategy", "trace-complete") != "trace-complete",
         "recohop decides on whole traces only (trace-complete)"),
        ("maximum_trace_size_bytes", lambda: top.int("maximum_trace_size_bytes") > 0,
         "recohop never drops a large trace undecided; it decides it early at max_spans_per_trace"),
        ("tail_storage", lambda: top.get("tail_storage") is not None,
         "recohop buffers in memory with its own write-ahead log (the stage's wal: setting), not in a storage "
         "extension"),
    )
    for key, unsupported, why in checks:
        try:
            if unsupported():
                out.append(Refused(top.at(key), why))
        except Refused as exc:
            out.append(exc)
    return out


def translate(component: Component, findings: Findings) -> ImportedPolicies | None:
    """The policy file and stage settings for one tail_sampling processor; refusals go to `findings`."""
    before = len(findings.refused)
    try:
        top = Section(component.config, component.path)
        policies = top.sections("policies")
    except Refused as exc:
        findings.refuse(exc)
        return None
    out = ImportedPolicies()
    translator = _Translator(findings)
    for step in (_timing, _sizes):
        try:
            step(top, out, translator)
        except Refused as exc:
            findings.refuse(exc)
    for exc in _no_equivalent(top):
        findings.refuse(exc)
    if not policies:
        findings.refuse(Refused(top.at("policies"), "no policies: otelcol would keep nothing, and a recohop "
                                                    "policy file needs at least one"))
    taken: set[str] = set()
    for i, sec in enumerate(policies):
        name = sec.data.get("name")
        if not isinstance(name, str) or not name:
            name = f"policy-{i}"
            sec.path = f"{sec.path} ({name})"
            translator.note(sec.path, f"no name: written as '{name}'")
        else:
            sec.path = f"{sec.path} ({name})"
        try:
            translator.top(sec, name, out, taken)
        except Refused as exc:
            findings.refuse(exc)
    for key in top.leftover():
        findings.refuse(Refused(top.at(key), "not a setting of otelcol v0.158's tail_sampling processor"))
    return None if findings.refused[before:] else out
