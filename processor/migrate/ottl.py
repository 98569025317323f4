"""The part of OTTL span conditions that recohop policies can express.

otelcol's `ottl_condition` policy samples a trace when any span satisfies any listed condition. recohop policies
look at the whole trace, so a condition translates when it is a test on one fact of a span: an attribute (of the
span, or of its resource) equal to a literal, at least / at most a number, or matching a regex (`IsMatch`), or
the span status being ERROR. `or` becomes several policies (the trace matches if any does). `and` and `not`
inside one condition are refused: OTTL applies them to a single span, while recohop's `and` / `not` apply to the
trace, whose parts may match different spans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<op>==|!=|>=|<=|>|<)
    | (?P<punct>[()\[\],])
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""", re.VERBOSE)

ERROR_CODES = ("STATUS_CODE_ERROR", 2)


class OttlRefused(Exception):
    """The condition (or a part of it) has no recohop equivalent; the message says why."""


@dataclass(frozen=True)
class Path:
    """`attributes["k"]`, `resource.attributes["k"]`, `status.code`, ... (names, then bracket keys)."""

    names: tuple[str, ...]
    keys: tuple[str, ...]

    def text(self) -> str:
        return ".".join(self.names) + "".join(f'["{k}"]' for k in self.keys)


@dataclass(frozen=True)
class Enum:
    name: str


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}


def _unquote(body: str) -> str:
    """Undo OTTL's string escapes (backslash before a backslash, a quote, n or t); any other backslash stays,
    as regex patterns need it."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    at = 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None:
            raise OttlRefused(f"cannot read the condition at character {at + 1}")
        kind = match.lastgroup
        value: Any = match.group(kind)
        if kind == "string":
            value = _unquote(value[1:-1])
        elif kind == "number":
            value = float(value) if any(c in value for c in ".eE") else int(value)
        out.append((kind, value))
        at = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, value: Any = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (value is not None and tok[1] != value):
            raise OttlRefused(f"cannot read the condition: expected {value or kind}, found {tok[1] if tok else 'the end'}")
        self.i += 1
        return tok

    def word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "ident" and tok[1] == word

    def expr(self) -> Any:
        parts = [self.conjunction()]
        while self.word("or"):
            self.take()
            parts.append(self.conjunction())
        return ("or", parts) if len(parts) > 1 else parts[0]

    def conjunction(self) -> Any:
        parts = [self.unary()]
        while self.word("and"):
            self.take()
            parts.append(self.unary())
        return ("and", parts) if len(parts) > 1 else parts[0]

    def unary(self) -> Any:
        if self.word("not"):
            self.take()
            return ("not", self.unary())
        tok = self.peek()
        if tok == ("punct", "("):
            self.take()
            inner = self.expr()
            self.take("punct", ")")
            return inner
        left = self.value()
        tok = self.peek()
        if tok is not None and tok[0] == "op":
            self.take()
            return ("cmp", tok[1], left, self.value())
        return ("bare", left)

    def value(self) -> Any:
        kind, value = self.take()
        if kind in ("string", "number"):
            return value
        if kind != "ident":
            raise OttlRefused(f"cannot read the condition: unexpected '{value}'")
        if value in ("true", "false"):
            return value == "true"
        if value == "nil":
            return None
        if self.peek() == ("punct", "("):
            self.take()
            args = []
            while self.peek() != ("punct", ")"):
                args.append(self.value())
                if self.peek() == ("punct", ","):
                    self.take()
            self.take("punct", ")")
            return ("call", value, args)
        keys = []
        while self.peek() == ("punct", "["):
            self.take()
            keys.append(self.take("string")[1])
            self.take("punct", "]")
        if not keys and value.isupper():
            return Enum(value)
        return Path(tuple(value.split(".")), tuple(keys))


def _attribute_target(path: Any) -> tuple[str, str] | None:
    """(scope, key) for a span or resource attribute path, else None."""
    if not isinstance(path, Path) or len(path.keys) != 1:
        return None
    names = path.names[1:] if path.names[:1] == ("span",) else path.names
    if names == ("attributes",):
        return "span", path.keys[0]
    if names == ("resource", "attributes"):
        return "resource", path.keys[0]
    return None


def _is_status_code(path: Any) -> bool:
    return isinstance(path, Path) and not path.keys and path.names in (("status", "code"), ("span", "status", "code"))


_FLIP = {">=": "<=", "<=": ">=", "==": "==", "!=": "!=", ">": "<", "<": ">"}


def _translate(node: Any) -> list[dict[str, Any]]:
    kind = node[0]
    if kind == "or":
        return [policy for part in node[1] for policy in _translate(part)]
    if kind == "and":
        raise OttlRefused("`and` inside one condition holds on a single span; recohop's `and` holds on the whole "
                          "trace (its parts may match different spans), so the meaning would change")
    if kind == "not":
        raise OttlRefused("`not` inside one condition holds on a single span (some span without X); recohop's "
                          "`not` holds on the whole trace (no span with X)")
    if kind == "bare":
        value = node[1]
        if value is True:
            return [{"type": "always"}]
        if isinstance(value, tuple) and value[0] == "call" and value[1] == "IsMatch" and len(value[2]) == 2:
            target = _attribute_target(value[2][0])
            pattern = value[2][1]
            if target is None or not isinstance(pattern, str):
                raise OttlRefused("IsMatch translates only on attributes[\"KEY\"] or resource.attributes[\"KEY\"] "
                                  "with a literal pattern")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise OttlRefused(f"the IsMatch pattern is not a regular expression recohop (Python) reads: "
                                  f"{exc}") from None
            return [{"type": "attribute", "key": target[1], "regex": pattern, "scope": target[0]}]
        what = value[1] if isinstance(value, tuple) and value[0] == "call" else value
        raise OttlRefused(f"{what!r} has no recohop equivalent (translated: comparisons on attributes and "
                          "status.code, IsMatch on attributes)")
    _, op, left, right = node
    if not isinstance(left, Path) and isinstance(right, Path):
        left, right, op = right, left, _FLIP[op]
    if _is_status_code(left):
        code = right.name if isinstance(right, Enum) else right
        if op == "==" and code in ERROR_CODES:
            return [{"type": "status_code", "exception_events": False}]
        raise OttlRefused("recohop's status_code policy matches status ERROR only (status.code == STATUS_CODE_ERROR)")
    target = _attribute_target(left)
    if target is None:
        shown = left.text() if isinstance(left, Path) else repr(left)
        raise OttlRefused(f"{shown} has no recohop policy (translated: attributes[\"KEY\"], "
                          "resource.attributes[\"KEY\"], status.code)")
    scope, key = target
    if isinstance(right, (Path, Enum, tuple)) or right is None:
        raise OttlRefused("the attribute must be compared with a literal string, boolean or number")
    if op == "==":
        return [{"type": "attribute", "key": key, "value": right, "scope": scope}]
    if op in (">=", "<=") and isinstance(right, (int, float)) and not isinstance(right, bool):
        return [{"type": "attribute", "key": key, "min" if op == ">=" else "max": right, "scope": scope}]
    if op in (">", "<"):
        raise OttlRefused(f"recohop's attribute bounds are inclusive (min/max); `{op}` has no exact equivalent "
                          "(write >= or <=)")
    raise OttlRefused(f"`{op}` on an attribute has no recohop equivalent (a span lacking the attribute satisfies "
                      "!= in OTTL)" if op == "!=" else f"`{op}` with {right!r} has no recohop equivalent")


def span_condition_policies(condition: str) -> list[dict[str, Any]]:
    """The recohop policies (any of which matching = the condition holding on some span) for one OTTL span
    condition; OttlRefused when it cannot be expressed."""
    parser = _Parser(condition)
    tree = parser.expr()
    if parser.peek() is not None:
        raise OttlRefused(f"cannot read the condition: unexpected '{parser.peek()[1]}'")  # type: ignore[index]
    return _translate(tree)
