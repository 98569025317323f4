"""The `recohop` command: argument parsing only. Each subcommand lives in `processor/commands/<name>.py`
and exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int` as the default."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import processor
import processor.commands
from processor.config_node import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recohop", description=processor.__doc__)
    parser.add_argument("--version", action="version", version=f"recohop {processor.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(processor.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"processor.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"recohop: config error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"recohop {args.command}: needs {exc.name}, which the hop itself does not: "
              f"pip install 'recohop[{extra}]'", file=sys.stderr)
        return 2


# Packages only some commands need, and the extra that brings them (pyproject.toml).
EXTRAS = {"grafanalib": "dashboards", "matplotlib": "dashboards", "opentelemetry": "recommender"}


if __name__ == "__main__":
    sys.exit(main())
