"""Argument parsing for `python -m dashboards …` and `recohop dashboards …` (one definition for both)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards import datasources


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the `build` and `preview` subcommands to `parser`; each sets `func(args) -> int`."""
    sub = parser.add_subparsers(dest="dashboards_command", metavar="COMMAND")
    b = sub.add_parser("build", help="write Grafana dashboards, Prometheus rule files and datasource provisioning")
    b.add_argument("--out", required=True, type=Path, help="output directory (dashboards/generated for the repo copy)")
    b.add_argument("--trace-datasource-uid", default="tempo", help="uid of the trace datasource exemplars link to")
    b.add_argument("--trace-datasource-type", default="tempo", choices=datasources.TRACE_TYPES)
    b.add_argument("--trace-id-label", default="trace_id", help="exemplar label holding the trace id")
    b.set_defaults(func=_build)
    p = sub.add_parser("preview", help="render the overview dashboard from a Prometheus into a PNG")
    p.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument("--range", default="30m", dest="window", help="time range shown (e.g. 30m, 2h), ending now")
    p.add_argument("--scrape-interval", type=float, default=15.0, metavar="SECONDS",
                   help="the Prometheus scrape interval, for $__rate_interval as Grafana computes it (default 15)")
    p.add_argument("--rate-interval", metavar="DURATION",
                   help="use this window for $__rate_interval instead (e.g. 10s for a one-minute history)")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE[,VALUE]",
                   help="template variable value (default: All); repeatable")
    p.set_defaults(func=_preview)
    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    from dashboards.build import BuildOptions, write

    options = BuildOptions(args.trace_datasource_uid, args.trace_datasource_type, args.trace_id_label)
    for path in write(args.out, options):
        print(path)
    return 0


def _parse_vars(pairs: list[str]) -> dict[str, list[str]]:
    variables = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--var expects NAME=VALUE, got {pair!r}")
        variables[name] = value.split(",")
    return variables


def _preview(args: argparse.Namespace) -> int:
    from dashboards.preview import render

    with_data = render(args.prometheus, args.out, _parse_vars(args.var), args.window,
                       scrape_interval=args.scrape_interval, rate_interval=args.rate_interval)
    print(f"{args.out}: {with_data} panels with data")
    return 0 if with_data else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    add_commands(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
