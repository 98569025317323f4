"""`recohop policy check FILE`: validate a tail-sampling policy file (errors name file, policy and key)."""

from __future__ import annotations

import argparse

from processor.sampling.policyfile import load_policy_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policy", help="work with tail-sampling policy files")
    commands = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    check = commands.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    policies = load_policy_file(args.file)
    listed = ", ".join(f"{p.name} [{p.kind}]" for p in policies.policies)
    print(f"{args.file}: ok ({len(policies.policies)} policies: {listed})")
    return 0
