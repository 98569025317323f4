"""`recohop dashboards build|preview`: the dashboards package's commands under the recohop CLI."""

from __future__ import annotations

import argparse

from dashboards.cli import add_commands


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dashboards", help="build Grafana dashboards and alert rules, render a preview")
    add_commands(parser)
