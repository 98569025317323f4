"""`recohop redact check FILE` validates a redaction rules file; `recohop redact test FILE --value V
[--key-name K]` shows what a value becomes (for people writing rules). Neither ever prints the key."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter

from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from processor.config_node import ConfigError
from processor.redaction.pseudonym import Pseudonymiser, load_key
from processor.redaction.redactor import DROP, Redactor
from processor.redaction.rules import RuleSet, load_rules_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("redact", help="check redaction rules, or try them on a value")
    sub = parser.add_subparsers(dest="redact_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a redaction rules file")
    check.add_argument("file")
    check.set_defaults(func=run_check)
    test = sub.add_parser("test", help="show what a value becomes under a rules file")
    test.add_argument("file")
    test.add_argument("--value", required=True, help="the attribute value to try")
    test.add_argument("--key-name", help="the attribute key (without it only the value detectors apply)")
    test.set_defaults(func=run_test)


def _key_state(rules: RuleSet) -> str:
    source = rules.key_source
    if rules.pseudonymising_rule is None:
        return "not needed (no pseudonymise rule)"
    if source.key_file is not None:
        return f"from file {source.key_file} ({'present' if source.key_file.is_file() else 'MISSING'})"
    present = len(os.environ.get(source.env, "")) > 0
    return f"from ${source.env} ({'set' if present else 'NOT SET: serve would refuse to start'})"


def run_check(args: argparse.Namespace) -> int:
    rules = load_rules_file(args.file)
    actions = Counter(rule.action for _, rule in rules.rules)
    summary = ", ".join(f"{n} {action}" for action, n in sorted(actions.items())) or "no rules"
    detectors = ", ".join(rules.detector_kinds) or "off"
    print(f"{args.file}: ok ({rules.mode}; {summary}; detectors: {detectors}; pseudonym key: {_key_state(rules)})")
    return 0


def run_test(args: argparse.Namespace) -> int:
    rules = load_rules_file(args.file)
    pseudonymiser = None
    if rules.pseudonymising_rule is not None:
        try:
            key = load_key(rules.key_source, rules.pseudonymising_rule)
        except ConfigError:
            print("note: no pseudonym key available; using a throwaway key, so pseudonyms shown here differ "
                  "from the ones `serve` makes", file=sys.stderr)
            quiet = logging.getLogger("recohop.redact-test")
            quiet.propagate = False
            quiet.addHandler(logging.NullHandler())
            key = load_key(rules.key_source, rules.pseudonymising_rule, builtin_default=True, log=quiet)
        pseudonymiser = Pseudonymiser(key, rules.pseudonym_length)
    redactor = Redactor(rules, pseudonymiser)
    kv = KeyValue(key=args.key_name or "")
    kv.value.string_value = args.value
    if args.key_name is None:
        changed = redactor.value(kv.value)
    else:
        changed = redactor.keyvalue(kv)
    why = [f"rule {name}" for name in redactor.rule_hits] + [f"detector {k}" for k in redactor.detector_hits]
    if changed == DROP:
        print("(attribute dropped)" + (f"  [{', '.join(why)}]" if why else ""))
    elif not changed:
        print(f"{kv.value.string_value}  [unchanged]")
    else:
        print(f"{kv.value.string_value}  [{', '.join(why)}]")
    return 0
