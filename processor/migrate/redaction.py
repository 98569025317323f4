"""otelcol's redaction processor (v0.158) -> a recohop redaction rules file.

What otelcol does to each attribute (resource, scope, span, event, log record, log body map, metric point), in
this order, and the recohop rule that does the same (recohop: first matching rule wins):
1. a key in `ignored_keys` / matching `ignored_key_patterns` is left alone  -> `keep` with `detectors: false`, first;
2. unless `allow_all_keys`, a key not in `allowed_keys` is removed         -> `mode: allowlist`, `otherwise: drop`,
   an allowed key -> `keep` (`detectors: false`: otelcol scans no values unless `blocked_values` says so);
3. a value matching `allowed_values` is left alone                          -> (no equivalent: refused when it
   would change anything);
4. a key matching `blocked_key_patterns` has its whole value masked         -> `mask` (`****`, as otelcol), or
   hashed when `hash_function` is set -> `pseudonymise` (`hmac-sha256` with the same key gives the same hex);
5. parts of values matching `blocked_values` are masked                     -> refused: recohop masks values only
   with its built-in detectors, not with custom regexes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from processor.migrate.source import Component, Findings, Refused, Section
from processor.redaction.pseudonym import DEFAULT_KEY_ENV

# otelcol hash_function -> hex characters of its output (recohop writes up to 64 of its HMAC-SHA256).
HASH_HEX = {"md5": 32, "sha1": 40, "sha3": 64, "hmac-sha256": 64, "hmac-sha512": 64}
_ENV_REF = re.compile(r"^\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass
class ImportedRedaction:
    rules: dict[str, Any]
    comments: list[str] = field(default_factory=list)


def _compiled(patterns: list[str], path: str) -> list[re.Pattern[str]]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise Refused(f"{path}[{i}]", f"not a regular expression recohop (Python re) reads ({exc}); rewrite it "
                                          "in the syntax Go's RE2 and Python share") from None
    return out


def _key_env(sec: Section, hash_function: str, findings: Findings) -> str:
    """Where recohop reads the HMAC key: the variable otelcol's hmac_key names, else RECOHOP_PSEUDONYM_KEY (the
    secret itself is never written to a file)."""
    raw = sec.get("hmac_key", env_ok=True)
    if isinstance(raw, str):
        match = _ENV_REF.match(raw.strip())
        if match:
            if hash_function != "hmac-sha256":
                findings.note(sec.at("hmac_key"), f"recohop's key comes from ${match.group(1)} too")
            return match.group(1)
        findings.note(sec.at("hmac_key"), f"the key is written in the otelcol config; recohop reads it from "
                                          f"${DEFAULT_KEY_ENV} (set it to the same secret; it is never copied into "
                                          "a file)")
    elif hash_function.startswith("hmac"):
        raise Refused(sec.at("hmac_key"), f"{hash_function} needs hmac_key (otelcol refuses it without one)")
    return DEFAULT_KEY_ENV


def translate(component: Component, findings: Findings) -> ImportedRedaction | None:
    """The rules file for one redaction processor; refusals go to `findings`."""
    before = len(findings.refused)

    attempt = findings.attempt
    sec = findings.section(component)
    if sec is None:
        return None
    allow_all = attempt(lambda: sec.bool("allow_all_keys"), False)
    allowed = attempt(lambda: sec.str_list("allowed_keys"), [])
    ignored = attempt(lambda: sec.str_list("ignored_keys"), [])
    ignored_patterns = attempt(lambda: sec.str_list("ignored_key_patterns"), [])
    attempt(lambda: _compiled(ignored_patterns, sec.at("ignored_key_patterns")), [])
    blocked_patterns = attempt(lambda: sec.str_list("blocked_key_patterns"), [])
    blocked = attempt(lambda: _compiled(blocked_patterns, sec.at("blocked_key_patterns")), [])
    hash_function = attempt(lambda: sec.str("hash_function").lower(), "")
    redact_all_types = attempt(lambda: sec.bool("redact_all_types"), False)
    summary = attempt(lambda: sec.str("summary", "silent"), "silent")

    if hash_function and hash_function not in HASH_HEX:
        findings.refuse(Refused(sec.at("hash_function"), f"'{hash_function}' is not a hash function of otelcol "
                                                         "v0.158 (md5, sha1, sha3, hmac-sha256, hmac-sha512)"))
    if attempt(lambda: sec.str_list("blocked_values"), []):
        findings.refuse(Refused(sec.at("blocked_values"), "recohop masks parts of values only with its built-in "
                                "detectors (email, phone, card, ipv4, ipv6, jwt, bearer, iban: each with its own "
                                "validation), not with custom regexes; a `detectors.patterns` setting would be "
                                "needed. Mask or drop the keys that carry them instead"))
    masks_something = bool(blocked)
    if attempt(lambda: sec.str_list("allowed_values"), []):
        if masks_something:
            findings.refuse(Refused(sec.at("allowed_values"), "recohop chooses a rule by the key only; it cannot "
                                    "exempt values matching a pattern from masking (a value allowlist would be "
                                    "needed)"))
        else:
            findings.note(sec.at("allowed_values"), "no effect in otelcol without blocked_key_patterns or "
                                                    "blocked_values, so none here")
    for name in ("url_sanitizer", "db_sanitizer"):
        part = attempt(lambda name=name: sec.section(name), None)
        if part is None:
            continue
        enabled = [k for k, v in part.data.items() if k == "enabled" and v is True
                   or isinstance(v, dict) and v.get("enabled") is True]
        part.read.update(part.data)
        if enabled:
            what = "URLs" if name == "url_sanitizer" else "database statements"
            findings.refuse(Refused(part.path, f"recohop has no sanitizer for {what} (it would need a value "
                                               "rewriter of that kind)"))
    if summary not in ("silent", "info", "debug"):
        findings.refuse(Refused(sec.at("summary"), f"'{summary}' is not silent, info or debug"))

    mask: dict[str, Any] = {"action": "mask"}
    rules: dict[str, Any] = {"mode": "denylist" if allow_all else "allowlist"}
    if not allow_all:
        rules["otherwise"] = "drop"
    if hash_function in HASH_HEX:
        env = attempt(lambda: _key_env(sec, hash_function, findings), DEFAULT_KEY_ENV)
        rules["pseudonym"] = {"key_env": env, "prefix": "", "length": HASH_HEX[hash_function]}
        mask = {"action": "pseudonymise"}
        if hash_function != "hmac-sha256":
            findings.note(sec.at("hash_function"), f"recohop hashes with HMAC-SHA256 under a secret key, not "
                                                   f"{hash_function}: the same values hash alike, but not to "
                                                   "otelcol's strings (an unkeyed hash of an id can be reversed "
                                                   "by guessing, a keyed one cannot)")
        findings.note(sec.at("hash_function"), "on a non-string value otelcol hashes "
                      + ("its text" if redact_all_types else "the empty string")
                      + "; recohop hashes its text (a boolean as True/False)")
    else:
        sec.get("hmac_key", env_ok=True)
    out_rules: list[dict[str, Any]] = []
    out_rules += [{"key": k, "action": "keep", "detectors": False} for k in ignored]
    out_rules += [{"regex": p, "action": "keep", "detectors": False} for p in ignored_patterns]
    if allow_all:
        out_rules += [{"regex": p.pattern, **mask} for p in blocked]
    else:
        for key in allowed:
            if key in ignored:
                continue
            masked = any(p.search(key) for p in blocked)
            out_rules.append({"key": key, **mask} if masked else {"key": key, "action": "keep", "detectors": False})
        if blocked_patterns and not any(any(p.search(k) for p in blocked) for k in allowed):
            findings.note(sec.at("blocked_key_patterns"), "matches no allowed key: every key it matches is "
                                                          "removed anyway (as in otelcol)")
    rules["rules"] = out_rules
    rules["detectors"] = False
    if summary in ("info", "debug"):
        rules["summary_attribute"] = True
        findings.note(sec.at("summary"), "recohop adds redaction.redacted.count (values changed) to a changed span; "
                                         "otelcol adds redaction.redacted/masked/allowed/ignored.count"
                                         + (" and the key lists" if summary == "debug" else ""))
    if redact_all_types and not hash_function:
        findings.note(sec.at("redact_all_types"), "in otelcol it changes only how blocked_values and allowed_values "
                                                  "read non-string values; neither applies here")
    for key in sec.leftover():
        findings.refuse(Refused(sec.at(key), "not a setting of otelcol v0.158's redaction processor"))
    if findings.refused[before:]:
        return None
    comments = [f"note ({n.path[len(sec.path):].lstrip('.')}): {n.text}" for n in findings.notes_under(sec.path)]
    return ImportedRedaction(rules, comments)
