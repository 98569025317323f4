"""`recohop policy check FILE`: validate a tail-sampling policy file (errors name file, policy and key).
`recohop policy import OTELCOL_CONFIG --out DIR`: translate a collector config's tail_sampling processor,
redaction processor and spanmetrics connector into recohop files (see `processor/migrate/`)."""

from __future__ import annotations

import argparse
import sys

from processor.migrate.importer import run_import
from processor.sampling.policyfile import load_policy_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policy", help="work with tail-sampling policy files")
    commands = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    check = commands.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    check.set_defaults(func=run_check)
    imp = commands.add_parser(
        "import", help="translate an OpenTelemetry Collector config into recohop policy, redaction and "
                       "derivation files",
        description="Reads an otelcol config (v0.158 semantics) and writes policies.yaml (tail_sampling), "
                    "redaction.yaml (redaction), derivations.yaml (spanmetrics connector) and recohop.yaml (a hop "
                    "config running them). Anything without a recohop equivalent is refused with its key path and "
                    "why, and then nothing is written.")
    imp.add_argument("config", help="the collector's config file (one file; merge several first)")
    imp.add_argument("--out", required=True, help="directory to write the recohop files to")
    imp.add_argument("--only", action="append", default=[], metavar="ID",
                     help="import only this component id (repeatable), e.g. tail_sampling/main")
    imp.add_argument("--force", action="store_true", help="overwrite files a previous import wrote")
    imp.set_defaults(func=run_import_command)


def run_check(args: argparse.Namespace) -> int:
    policies = load_policy_file(args.file)
    listed = ", ".join(f"{p.name} [{p.kind}]" for p in policies.policies)
    print(f"{args.file}: ok ({len(policies.policies)} policies: {listed})")
    return 0


def run_import_command(args: argparse.Namespace) -> int:
    result = run_import(args.config, args.out, only=args.only, force=args.force)
    findings = result.findings
    if findings.refused:
        print(f"recohop: {args.config}: not imported, nothing written ({len(findings.refused)} without a recohop "
              "equivalent):", file=sys.stderr)
        for refusal in findings.refused:
            print(f"  {refusal}", file=sys.stderr)
        return 2
    for path, summary in result.written:
        print(f"{path}: ok ({summary})")
    if findings.notes:
        print("translated with a difference (also written as comments in the files):")
        for note in findings.notes:
            print(f"  {note}")
    if result.left_in_otelcol:
        print("left in otelcol (no recohop stage of their kind): " + ", ".join(result.left_in_otelcol))
    return 0
