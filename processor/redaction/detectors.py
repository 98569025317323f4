"""Value detectors: one combined precompiled regex pass over a string, validators for the kinds that need
them (Luhn for cards, mod-97 for IBANs, `ipaddress` for IPs), and a typed tag for every hit.

Beyond the built-in kinds: operator patterns (`blocked_values`, kind `custom`) run after them, and a value that
may hold an encoded form (`%40`, `&#64;`, full-width digits or `＠`) is decoded (URL, HTML entities, NFKC and
Unicode digits) and rescanned; when the decoded text holds something, the redacted decoded text replaces the
value (the raw form must not survive in any encoding).

Why one pass: a value is scanned once whatever the number of kinds. A cheap prefilter (`possible_kinds`:
`in`, `count`, `translate`, all C-level) says which kinds could occur at all; most values need none and skip
the regex, the others get the combined regex of just those kinds (compiled once per combination). Results are
cached per value because recommender values repeat a lot (placements, model versions, request ids).
"""

from __future__ import annotations

import html
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

# The order is the C scanner's kind ids (processor/native/_redact.c) and the priority at one position.
KINDS: tuple[str, ...] = ("bearer", "jwt", "email", "iban", "card", "ipv6", "ipv4", "phone",
                          "secret", "ssn", "mac", "geo", "cookie", "custom")

TAGS: dict[str, str] = {
    "email": "<email>", "phone": "<phone>", "card": "<card>", "ipv4": "<ipv4>", "ipv6": "<ipv6>",
    "jwt": "<jwt>", "bearer": "Bearer <token>", "iban": "<iban>", "secret": "<secret>", "ssn": "<ssn>",
    "mac": "<mac>", "geo": "<geo>", "cookie": "<session>", "custom": "<redacted>",
}

# National phone formats (no country code), per region; `detectors: {phone_regions: [...]}` picks them.
PHONE_REGIONS: dict[str, str] = {
    # NANP: (415) 555-2671, 415-555-2671, 415.555.2671, 415 555 2671
    "US": (r"(?<![\w(])\([0-9]{2,5}\)[ .\-]?[0-9]{2,4}(?:[ .\-]?[0-9]{2,5}){1,3}(?!\w)"
           r"|(?<![\w.\-])[0-9]{3}[.\- ][0-9]{3}[.\- ][0-9]{4}(?![\w\-])"),
    # UK: 020 7946 0958, 07700 900123, 0161-496-0000
    "GB": r"(?<![\w.\-])0[1-9][0-9]{2,4}[ \-][0-9]{3,4}(?:[ \-]?[0-9]{3,4})?(?![\w\-])",
    # Germany: 030 12345678, 0171/1234567, 089-1234-5678
    "DE": r"(?<![\w.\-/])0[1-9][0-9]{1,4}[ /\-][0-9]{3,8}(?:[ \-][0-9]{1,5})?(?![\w\-/])",
    # France: 01 23 45 67 89, 06.12.34.56.78
    "FR": r"(?<![\w.\-])0[1-9](?:[ .\-][0-9]{2}){4}(?![\w\-])",
}
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR")
US_NATIONAL = PHONE_REGIONS["US"]


def phone_pattern(regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> str:
    """+CC / 00CC international forms, then the national forms of `regions`."""
    national = "|".join(PHONE_REGIONS[r] for r in regions)
    international = r"(?<![\w+\-])(?:\+[0-9]{1,3}|00[0-9]{1,3}[ .\-])(?:[ .\-]?\(?[0-9]{1,5}\)?){1,6}(?!\w)"
    return international + ("|" + national if national else "")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PATTERNS: dict[str, str] = {
    # `Bearer <token>`: the token must look like a credential, not prose ("bearer of good news").
    "bearer": r"\b(?:Bearer|bearer|BEARER)[ \t]+[A-Za-z0-9\-._~+/]{8,}=*",
    "jwt": r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",
    # Plus-addressing and dots in the local part; unicode letters via \w.
    # The lookbehind lets a match start only where a local-part run starts: linear, not quadratic, on long runs.
    # Quoted local parts ("jane doe"@x.org) and internationalised domains (unicode labels and TLDs, punycode).
    "email": (r"(?:(?<![\w.%+\-])[\w.%+\-]+|\"[^\"\r\n@]{1,64}\")@[\w\-]+(?:\.[\w\-]+)*"
              r"\.(?:[^\W\d_]{2,}|xn--[a-z0-9\-]{2,})"),
    "iban": r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{1,4}){3,8}\b",
    # Written cards start with a 4-digit group; 13-19 digits with single space/dash separators.
    "card": r"(?<![\w\-.])[0-9]{4}(?:[ \-.]?[0-9]){9,15}(?![\w\-]|\.[0-9])",
    "ipv6": r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{0,4})(?:%[\w.]+)?(?!\w|:[0-9A-Fa-f:])",
    "ipv4": rf"(?<![\w.\-]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w\-]|\.[0-9])",
    "phone": phone_pattern(),
    # Credentials by shape: cloud access key ids, source-host tokens, payment-provider live keys, chat-workspace
    # tokens, Basic auth, and secret-named query/cookie parameters (`api_key=...`, `password=...`).
    "secret": (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"
               r"|\b[sr]k_live_[A-Za-z0-9]{10,}|\bxox[abposr]-[A-Za-z0-9\-]{8,}"
               r"|\bB(?:asic|ASIC)[ \t]+[A-Za-z0-9+/]{6,}={0,2}"
               r"|(?<![A-Za-z0-9])(?i:api[_\-]?key|apikey|access[_\-]?key|secret[_\-]?key|private[_\-]?key"
               r"|access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|id[_\-]?token|client[_\-]?secret|token"
               r"|secret|password|passwd|pwd|passphrase|signature|sig|x-amz-signature|x-amz-credential|credential)"
               r"=[^&\s#;,\"'<>]{3,}"),
    # US SSN (not 000/666/9xx area, not 00 group, not 0000 serial).
    "ssn": r"(?<![\w\-])(?!000|666|9[0-9][0-9])[0-9]{3}(?P<ssn_sep>[\- ])(?!00)[0-9]{2}(?P=ssn_sep)(?!0000)[0-9]{4}(?![\w\-])",
    "mac": r"(?<![\w:\-])[0-9A-Fa-f]{2}(?P<mac_sep>[:\-])(?:[0-9A-Fa-f]{2}(?P=mac_sep)){4}[0-9A-Fa-f]{2}(?![\w:\-])",
    # Precise coordinates: "52.520008, 13.404954" (4+ decimals each, in range).
    "geo": (r"(?<![\w.\-])[\-+]?(?:[0-8]?[0-9]|90)\.[0-9]{4,}[ \t]*,[ \t]*[\-+]?(?:1[0-7][0-9]|0?[0-9]?[0-9]|180)"
            r"\.[0-9]{4,}(?![\w.])"),
    "cookie": (r"(?<![A-Za-z0-9])(?i:session|sessionid|session_id|sid|jsessionid|phpsessid|connect\.sid"
               r"|asp\.net_sessionid|laravel_session|remember_token|auth_session)=[^;\s&,\"'<>]{6,}"),
}

_NO_DIGITS = str.maketrans("", "", "0123456789")
# Markers of credentials that need no `=` (the C prefilter tests the same bytes: _redact.c secret_mark).
_SECRET_MARK = re.compile(r"AKIA|ASIA|gh[pousr]_|github_pat_|[sr]k_live_|xox[abposr]-|B(?:asic|ASIC)")


def possible_kinds(text: str) -> frozenset[str]:
    """The kinds that could occur in `text`, from cheap C-level string checks (each kind's pattern or
    validator needs what is tested here; a test checks this against the full scan)."""
    kinds: set[str] = set()
    if "@" in text:
        kinds.add("email")
    if "eyJ" in text:
        kinds.add("jwt")
    if "earer" in text or "EARER" in text:
        kinds.add("bearer")
    colons = text.count(":")
    if colons >= 2:
        kinds.add("ipv6")
    if colons >= 5 or text.count("-") >= 5:
        kinds.add("mac")
    if "=" in text:
        kinds.update(("secret", "cookie"))
    elif _SECRET_MARK.search(text):
        kinds.add("secret")
    kinds.add("custom")  # operator patterns have no prefilter (the kind is only enabled when some are set)
    # One lowercase token of word characters and dashes: digit runs inside it are bounded by letters or
    # dashes, which the card/phone/IPv4 patterns refuse, and IBANs are upper case.
    if text.islower() and text.replace("-", "").replace("_", "").isalnum():
        return frozenset(kinds)
    digits = len(text) - len(text.translate(_NO_DIGITS))
    if digits >= 7:
        kinds.add("phone")
        if digits >= 9:
            kinds.add("ssn")
        if digits >= 13:
            kinds.add("card")
    if digits >= 8 and text.count(".") >= 2:
        kinds.add("geo")
    if digits >= 4 and text.count(".") >= 3:
        kinds.add("ipv4")
    if digits >= 2 and len(text) >= 15 and not text.islower():
        kinds.add("iban")
    return frozenset(kinds)


def may_be_encoded(text: str) -> bool:
    """The text may hold an encoded form the detectors decode (the C prefilter's `encoded` bit, after the kinds)."""
    return "%" in text or "&" in text or not text.isascii()


IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}

# Visa, Mastercard (5x, 2221-2720), Amex, Diners, Discover, UnionPay, JCB, Maestro (50, 56-69), Mir (2200-2204).
_CARD_PREFIXES = re.compile(
    r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9]|2)|35(?:2[89]|[3-8])|5[06-9]"
    r"|6\d|220[0-4]")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _shrinking(text: str, separators: str) -> Iterable[str]:
    """The match, then the match without its last separated group, and so on (validators cannot make the
    regex backtrack, so a card or IBAN followed by more groups is retried shorter)."""
    yield text
    cut = len(text)
    while True:
        cut = max(text.rfind(sep, 0, cut) for sep in separators)
        if cut <= 0:
            return
        yield text[:cut]


def _card(text: str) -> int:
    for candidate in _shrinking(text, " -."):
        digits = candidate.replace(" ", "").replace("-", "").replace(".", "")
        if 13 <= len(digits) <= 19 and _CARD_PREFIXES.match(digits) and luhn_ok(digits):
            return len(candidate)
    return 0


def _iban(text: str) -> int:
    for candidate in _shrinking(text, " "):
        compact = candidate.replace(" ", "")
        if IBAN_LENGTHS.get(compact[:2]) != len(compact):
            continue
        moved = compact[4:] + compact[:4]
        if int("".join(str(int(c, 36)) for c in moved)) % 97 == 1:
            return len(candidate)
    return 0


def _ipv6(text: str) -> int:
    if not any(c.isdigit() for c in text):
        return 0  # "abc::def"-like code paths, not addresses
    if text.endswith(":") and not text.endswith("::"):
        text = text[:-1]  # "... fe80::1: timeout": the colon belongs to the prose
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return 0
    return len(text)


def _phone(text: str) -> int:
    digits = sum(c.isdigit() for c in text)
    low = 8 if text[0] in "+0" else 7
    return len(text) if low <= digits <= 15 else 0


def _bearer(text: str) -> int:
    token = text.split(None, 1)[1] if len(text.split(None, 1)) == 2 else ""
    looks_secret = len(token) >= 20 or any(not c.isalpha() for c in token)
    return len(text) if looks_secret else 0


def _always(text: str) -> int:
    return len(text)


# How much of a match is really of its kind (0: not at all).
_VALIDATORS: dict[str, Callable[[str], int]] = {
    "card": _card, "iban": _iban, "ipv6": _ipv6, "phone": _phone, "bearer": _bearer,
    "email": _always, "jwt": _always, "ipv4": _always,
    "secret": _always, "ssn": _always, "mac": _always, "geo": _always, "cookie": _always,
}

_OTHER_DIGIT = re.compile(r"(?![0-9])\d")


def decoded(text: str) -> str:
    """`text` with URL escapes, HTML entities, compatibility forms (full-width `４` and `＠`) and other Unicode
    digits undone: what a reader of the value would see."""
    if "%" in text:
        text = unquote(text)
    if "&" in text:
        text = html.unescape(text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        text = _OTHER_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group(), 0)), text)
    return text


@dataclass(frozen=True)
class CustomPattern:
    """An operator pattern (`blocked_values`): every match is replaced by `tag`, counted as kind `custom`."""

    regex: re.Pattern[str]
    tag: str = TAGS["custom"]

Result = tuple[str, tuple[str, ...]] | None


class Detectors:
    """The enabled kinds as one regex, with a bounded cache of per-value results."""

    CACHE_MAX = 65536
    CACHE_VALUE_MAX_LEN = 256

    DECODE_DEPTH = 3  # %2540 -> %40 -> @: nested encodings, bounded

    def __init__(self, kinds: Iterable[str] = KINDS, custom: Sequence[CustomPattern] = (),
                 phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS, decode: bool = True) -> None:
        wanted = set(kinds)
        unknown = wanted - set(KINDS)
        if unknown:
            raise ValueError(f"unknown detector kinds: {sorted(unknown)}")
        # `custom` is on exactly when there are operator patterns (it has no prefilter: every value is scanned).
        wanted.discard("custom")
        if custom:
            wanted.add("custom")
        self.kinds = tuple(k for k in KINDS if k in wanted)
        self.enabled = bool(self.kinds)
        self.decode = decode and self.enabled
        self.custom = tuple(custom)
        self._patterns = dict(_PATTERNS, phone=phone_pattern(phone_regions))
        self._by_kinds: dict[frozenset[str], tuple[re.Pattern[str], tuple[str, ...]] | None] = {}
        self._single = {k: re.compile(self._patterns[k]) for k in self.kinds if k in self._patterns}
        self._cache: dict[str, Result] = {}


    def scan(self, text: str) -> Result:
        """None when `text` holds nothing; else (text with each hit replaced by its tag, kinds hit)."""
        if not self.enabled or len(text) < 3:
            return None
        cache = self._cache
        if text in cache:
            return cache[text]
        result = self._scan_all(text, 0)
        if len(text) <= self.CACHE_VALUE_MAX_LEN:
            if len(cache) >= self.CACHE_MAX:
                cache.clear()
            cache[text] = result
        return result

    def _scan_all(self, text: str, depth: int) -> Result:
        """Built-in kinds, then operator patterns, then (when it may hold one) the decoded form."""
        possible = possible_kinds(text)
        found = self._scan(text, self._regex_for(possible))
        out, hits = found if found is not None else (text, ())
        for pattern in self.custom:
            out, n = pattern.regex.subn(pattern.tag, out)
            hits += ("custom",) * n
        if self.decode and depth < self.DECODE_DEPTH and may_be_encoded(out):
            plain = decoded(out)
            if plain != out:
                again = self._scan_all(plain, depth + 1)
                if again is not None:
                    out, hits = again[0], hits + again[1]
        return (out, hits) if hits else None

    def _regex_for(self, possible: frozenset[str]) -> tuple[re.Pattern[str], tuple[str, ...]] | None:
        """The combined regex of the enabled kinds that can occur (compiled once per combination)."""
        found = self._by_kinds.get(possible)
        if found is None:
            kinds = tuple(k for k in self.kinds if k in possible and k in self._patterns)
            found = (re.compile("|".join(f"(?P<{k}>{self._patterns[k]})" for k in kinds)), kinds) if kinds else None
            self._by_kinds[possible] = found
        return found

    def _scan(self, text: str, compiled: tuple[re.Pattern[str], tuple[str, ...]] | None) -> Result:
        if compiled is None:
            return None
        regex, kinds = compiled
        hits: list[str] = []
        out: list[str] = []
        done = pos = 0
        search = regex.search
        while True:
            match = search(text, pos)
            if match is None:
                break
            kind, used = self._validate(match.lastgroup or "", text, match, kinds)
            if not used:
                pos = match.start() + 1  # rejected: later kinds may still start inside
                continue
            start = match.start()
            out.append(text[done:start])
            out.append(TAGS[kind])
            done = pos = start + used
            hits.append(kind)
        if not hits:
            return None
        out.append(text[done:])
        return "".join(out), tuple(hits)

    def _validate(self, kind: str, text: str, match: re.Match[str], kinds: tuple[str, ...]) -> tuple[str, int]:
        """(kind, characters that really are of it); when the first alternative's validator refuses,
        the later kinds are tried at the same place (e.g. `0044 20 7946 0958`: not a card, a phone)."""
        used = _VALIDATORS[kind](match.group())
        if used:
            return kind, used
        start = match.start()
        for other in kinds[kinds.index(kind) + 1:]:
            alt = self._single[other].match(text, start)
            if alt is not None:
                used = _VALIDATORS[other](alt.group())
                if used:
                    return other, used
        return kind, 0
