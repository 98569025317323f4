"""The redaction rules schema (read through `Node`, so errors name file, key path and expectation) and the
key matcher that turns an attribute key into its rule once, then answers from a dict.

Schema (a rules file, or the same keys inline in the hop config's redaction stage):

    mode: denylist | allowlist       # default denylist
    otherwise: drop | mask           # allowlist only: what happens to keys no rule lists (default drop)
    mask_text: "****"                # what `mask` writes unless the rule says `with:`
    pseudonym: {key_env: RECOHOP_PSEUDONYM_KEY, key_file: PATH, prefix: p_, length: 16}
    rules:                           # first match wins
      - key: user.id | glob: "user.*" | regex: "^enduser\\."   # exactly one
        ignore_case: false           # key/glob/regex matched case-insensitively (or write (?i) in a regex)
        action: pseudonymise | drop | mask | generalise | keep
        name: ...                    # metric label (default: the pattern)
        prefix: u_                   # pseudonymise
        with: "<email>"              # mask
        as: ip | age | geo | coord   # generalise; `bands: [18, 25, ...]` for age
        detectors: true              # keep: still run the value detectors (default true); false = a per-key
                                     # exception (versions, span ids, order ids: never rewritten)
    detectors: true | false | {kinds: [...], phone_regions: [US, GB, DE, FR], decode: true}
    blocked_values:                  # operator patterns (like otelcol's blocked_values), after the detectors
      - "ORD-[0-9]{6}"               # a regex; matches become <redacted>
      - {regex: "...", with: "<order>", ignore_case: false}
    summary_attribute: false         # add redaction.redacted.count to spans that were changed
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.config_node import ConfigError, Node
from processor.redaction.actions import (
    ACTIONS,
    DEFAULT_AGE_BANDS,
    GENERALISE_KINDS,
    Guarded,
    generalise_coord,
    generalise_geo,
    generalise_ip,
    make_age,
)
from processor.redaction.detectors import DEFAULT_PHONE_REGIONS, KINDS, PHONE_REGIONS, TAGS, CustomPattern
from processor.redaction.pseudonym import DEFAULT_KEY_ENV, KeySource

RULES_KEYS = ("mode", "otherwise", "mask_text", "pseudonym", "rules", "detectors", "summary_attribute",
              "blocked_values")
SUMMARY_ATTRIBUTE = "redaction.redacted.count"
BUILT_IN_KINDS = tuple(k for k in KINDS if k != "custom")  # `custom` is on when blocked_values are set

# Keys whose semantic convention says they are not personal (versions, span/trace ids, build numbers, batch and
# order ids): never rewritten, so `1.2.3.4` stays a version and a Luhn-valid order id stays an id.
NOT_PERSONAL_KEYS = (r"(?i)(?:^|[._])(?:[a-z]*version|build(?:[._]?(?:id|number|num))?|(?:parent[._]?)?span[._]?id"
                     r"|trace[._]?id|trace[._]?flags|batch[._]?id|order[._]?id)$")
# The common spellings of user and customer identifiers: user_id, userId, app.user.id, customer.id, ...
IDENTITY_KEYS = (r"(?i)(?:^|[._])(?:(?:end[._]?)?user|customer|cust|member|subscriber|buyer|shopper|patient|visitor"
                 r"|username|login|e[._]?mail|phone|msisdn|mobile)"
                 r"(?:[._]?(?:id|ids|name|email|mail|login|handle|uuid|guid|key|phone|number|no|address))?$")
# Keys that hold credentials whatever their value looks like (headers included: http.request.header.cookie).
SECRET_KEYS = (r"(?i)(?:^|[._\-])(?:password|passwd|pwd|secret|client[._\-]?secret|api[._\-]?key|apikey"
               r"|access[._\-]?token|auth[._\-]?token|refresh[._\-]?token|id[._\-]?token|authorization|cookie"
               r"|set[._\-]cookie|private[._\-]?key)$")
COORDINATE_KEYS = r"(?i)(?:^|[._])(?:lat|latitude|lon|lng|longitude)$"

# The mission default: not-personal keys left alone, user and customer identifiers pseudonymised (any common
# spelling), credential keys masked, coordinates and client IPs coarsened, and every detector on.
# `collector-config/redaction/default.yaml` is the same rules as a file (a test keeps them equal).
DEFAULT_RULES: dict[str, Any] = {
    "mode": "denylist",
    "rules": [
        {"regex": NOT_PERSONAL_KEYS, "action": "keep", "detectors": False, "name": "not-personal"},
        {"glob": "user.*", "ignore_case": True, "action": "pseudonymise", "prefix": "u_"},
        {"glob": "enduser.*", "ignore_case": True, "action": "pseudonymise", "prefix": "u_"},
        {"regex": IDENTITY_KEYS, "action": "pseudonymise", "prefix": "u_", "name": "identifiers"},
        {"regex": SECRET_KEYS, "action": "mask", "with": "<secret>", "name": "credentials"},
        {"regex": COORDINATE_KEYS, "action": "generalise", "as": "coord", "name": "coordinates"},
        {"key": "client.address", "action": "generalise", "as": "ip"},
        {"key": "http.client_ip", "action": "generalise", "as": "ip"},
    ],
    "detectors": True,
}


def default_stage_node() -> Node:
    """The built-in default's redaction stage (for the hop's zero-config pipeline, placed first)."""
    return Node({"type": "redaction", **copy.deepcopy(DEFAULT_RULES)}, "<built-in default>", "pipeline[0]")


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    prefix: str = ""
    mask_with: str = "****"
    generalise: Guarded | None = None  # never raises: an unreadable value becomes the kind's tag (counted)
    scan: bool = True  # keep rules: still run the detectors on the value


@dataclass
class RuleSet:
    file: str
    mode: str
    rules: list[tuple[Callable[[str], bool], Rule]]
    otherwise: Rule | None
    detector_kinds: tuple[str, ...]
    summary_attribute: bool
    key_source: KeySource
    pseudonym_length: int
    pseudonymising_rule: str | None = None
    blocked_values: tuple[CustomPattern, ...] = ()
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    decode: bool = True
    _cache: dict[str, Rule | None] = field(default_factory=dict)

    CACHE_MAX = 16384

    def unreadable_values(self) -> dict[str, int]:
        """Per rule, values its generalisation could not read (each became the kind's tag and a rule hit)."""
        rules = [rule for _, rule in self.rules] + ([self.otherwise] if self.otherwise else [])
        return {rule.name: rule.generalise.failures for rule in rules
                if rule.generalise is not None and rule.generalise.failures}

    def lookup(self, key: str) -> Rule | None:
        """The rule for `key` (first match), the allowlist's `otherwise`, or None (denylist, no rule)."""
        cache = self._cache
        if key in cache:
            return cache[key]
        found = self.otherwise
        for matches, rule in self.rules:
            if matches(key):
                found = rule
                break
        if len(cache) >= self.CACHE_MAX:
            cache.clear()
        cache[key] = found
        return found


def _pattern(node: Node) -> tuple[Callable[[str], bool], str]:
    """(matcher, pattern text)."""
    given = [k for k in ("key", "glob", "regex") if node.has(k)]
    if len(given) != 1:
        raise node.error("key", "exactly one of key, glob or regex" + (f" (got {', '.join(given)})" if given else ""))
    kind = given[0]
    text = node.str(kind)
    if not text:
        raise node.error(kind, "a non-empty pattern")
    fold = node.bool("ignore_case", False)
    if kind == "key":
        if fold:
            folded = text.casefold()
            return (lambda key: key.casefold() == folded), text
        return text.__eq__, text
    if kind == "glob":
        return re.compile(fnmatch.translate(text), re.IGNORECASE if fold else 0).match, text
    try:
        compiled = re.compile(text, re.IGNORECASE if fold else 0)
    except re.error as exc:
        raise node.error("regex", f"a valid regular expression ({exc.msg} at position {exc.pos})", text) from None
    return (lambda key: compiled.search(key) is not None), text


def _rule(node: Node, mask_text: str, default_prefix: str) -> tuple[Callable[[str], bool], Rule]:
    matches, text = _pattern(node)
    action = node.str("action", choices=ACTIONS)
    name = node.str("name", text)
    rule: Rule
    if action == "pseudonymise":
        rule = Rule(name, action, prefix=node.str("prefix", default_prefix))
    elif action == "mask":
        rule = Rule(name, action, mask_with=node.str("with", mask_text))
    elif action == "generalise":
        kind = node.str("as", choices=GENERALISE_KINDS) if node.has("as") else None
        if kind is None:
            raise node.error("as", "what to generalise the value as: one of " + ", ".join(GENERALISE_KINDS))
        if kind == "age":
            bands = node.list("bands", list(DEFAULT_AGE_BANDS))
            if len(bands) < 2 or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bands) \
                    or sorted(bands) != bands or len(set(bands)) != len(bands):
                raise node.error("bands", "at least two increasing positive integers (band lower bounds)", bands)
            fn = make_age(bands)
        else:
            fn = {"ip": generalise_ip, "geo": generalise_geo, "coord": generalise_coord}[kind]
        rule = Rule(name, action, generalise=Guarded(fn, f"<{kind}>"))
    elif action == "keep":
        rule = Rule(name, action, scan=node.bool("detectors", True))
    else:
        rule = Rule(name, action)
    node.done()
    return matches, rule


def _detector_kinds(node: Node) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(kinds, phone regions, decode)."""
    value = node.raw("detectors", True)
    if isinstance(value, bool):
        return (BUILT_IN_KINDS if value else ()), DEFAULT_PHONE_REGIONS, True
    det = node.child("detectors")
    enabled = det.bool("enabled", True)
    kinds = det.str_list("kinds", list(BUILT_IN_KINDS))
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise ConfigError(det.file, f"{det.key_path('kinds')}[{i}]", "one of " + ", ".join(KINDS), kind)
    regions = det.str_list("phone_regions", list(DEFAULT_PHONE_REGIONS))
    for i, region in enumerate(regions):
        if region not in PHONE_REGIONS:
            raise ConfigError(det.file, f"{det.key_path('phone_regions')}[{i}]",
                              "one of " + ", ".join(PHONE_REGIONS), region)
    decode = det.bool("decode", True)
    det.done()
    return (tuple(kinds) if enabled else ()), tuple(regions), decode


def _blocked_values(node: Node) -> tuple[CustomPattern, ...]:
    """Operator value patterns: a regex string, or {regex, with, ignore_case}."""
    found: list[CustomPattern] = []
    for i, item in enumerate(node.list("blocked_values")):
        where = f"{node.key_path('blocked_values')}[{i}]"
        if isinstance(item, str):
            text, tag, flags = item, TAGS["custom"], 0
        elif isinstance(item, dict):
            child = Node(item, node.file, where)
            text = child.str("regex")
            tag = child.str("with", TAGS["custom"])
            flags = re.IGNORECASE if child.bool("ignore_case", False) else 0
            child.done()
        else:
            raise ConfigError(node.file, where, "a regex, or {regex: ..., with: ...}", item)
        if not text:
            raise ConfigError(node.file, where, "a non-empty regex", text)
        try:
            compiled = re.compile(text, flags)
        except re.error as exc:
            raise ConfigError(node.file, where, f"a valid regular expression ({exc.msg} at position {exc.pos})",
                              text) from None
        if compiled.search(""):
            raise ConfigError(node.file, where, "a regex that cannot match the empty string", text)
        found.append(CustomPattern(compiled, tag))
    return tuple(found)


def _key_source(node: Node) -> tuple[KeySource, str, int]:
    pseudo = node.child("pseudonym")
    if pseudo.has("key"):
        raise pseudo.error("key", "key_env or key_file (the secret itself never goes in a config file)")
    env = pseudo.str("key_env", DEFAULT_KEY_ENV)
    key_file = pseudo.path_value("key_file")
    if pseudo.has("key_env") and key_file is not None:
        raise pseudo.error("key_file", "either key_env or key_file, not both")
    prefix = pseudo.str("prefix", "p_")
    length = pseudo.int("length", 16, minimum=8)
    if length > 64:
        raise pseudo.error("length", "an integer <= 64 (hex characters of the SHA-256 HMAC)", length)
    pseudo.done()
    return KeySource(file=node.file, env=env, key_file=key_file), prefix, length


def parse_rules(node: Node) -> RuleSet:
    """Read the rules keys of `node` (a rules file's top level, or a stage node with inline rules)."""
    mode = node.str("mode", "denylist", choices=("denylist", "allowlist"))
    mask_text = node.str("mask_text", "****")
    otherwise_action = node.str("otherwise", "drop", choices=("drop", "mask"))
    if mode == "denylist" and node.has("otherwise"):
        raise node.error("otherwise", "no `otherwise` in denylist mode (unlisted keys pass); use mode: allowlist")
    key_source, prefix, length = _key_source(node)
    if not isinstance(node.raw("rules", []), list):
        raise node.error("rules", "a list of rules (or, in a hop config, the path of a rules file)",
                         node.raw("rules"))
    rules: list[tuple[Callable[[str], bool], Rule]] = []
    pseudonymising: str | None = None
    for child in node.children("rules"):
        matches, rule = _rule(child, mask_text, prefix)
        rules.append((matches, rule))
        if rule.action == "pseudonymise" and pseudonymising is None:
            pseudonymising = f"{child.path} ({rule.name}) pseudonymises"
    otherwise = Rule("allowlist.otherwise", otherwise_action, mask_with=mask_text) if mode == "allowlist" else None
    kinds, regions, decode = _detector_kinds(node)
    return RuleSet(
        file=node.file, mode=mode, rules=rules, otherwise=otherwise, detector_kinds=kinds,
        summary_attribute=node.bool("summary_attribute", False), key_source=key_source,
        pseudonym_length=length,
        pseudonymising_rule=pseudonymising, blocked_values=_blocked_values(node), phone_regions=regions,
        decode=decode)


def load_rules_file(path: str | Path) -> RuleSet:
    node = Node.from_file(path)
    ruleset = parse_rules(node)
    node.done()
    return ruleset
