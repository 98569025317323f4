"""`recohop config`: render the collector-chain templates, list their parameters, print the built-in default."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from processor import render
from processor.config import DEFAULT_CONFIG


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="render collector/recohop/Kubernetes configs; show the default")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])

    profiles = "; ".join(f"{name}: {p.help}" for name, p in render.PROFILES.items())
    rend = sub.add_parser(
        "render", help="render a profile's files into a directory",
        description=f"Render the templates of one profile, or all, with parameters from --set. Profiles: {profiles}.")
    rend.add_argument("--profile", required=True, choices=[*render.PROFILES, "all"])
    rend.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                      help="override a parameter (repeatable); see `recohop config params --profile NAME`")
    rend.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    rend.set_defaults(func=run_render)

    params = sub.add_parser("params", help="list a profile's parameters with defaults and meaning")
    params.add_argument("--profile", required=True, choices=list(render.PROFILES))
    params.set_defaults(func=run_params)

    show = sub.add_parser("show-default", help="print the built-in default hop config (`recohop serve` with no --config)")
    show.set_defaults(func=run_show_default)


def run_render(args: argparse.Namespace) -> int:
    try:
        overrides = render.parse_assignments(args.assignments)
        files = (render.render_all(overrides) if args.profile == "all"
                 else render.render(args.profile, overrides))
    except render.RenderError as exc:
        print(f"recohop config render: {exc}", file=sys.stderr)
        return 2
    for path in render.write(files, args.out):
        print(path)
    return 0


def run_params(args: argparse.Namespace) -> int:
    for name, default in render.profile_parameters(args.profile).items():
        param = render.PARAMETERS[name]
        choices = f" (one of {', '.join(param.choices)})" if param.choices else ""
        print(f"{name} = {default!s}{choices}\n    {param.help}")
    return 0


def run_show_default(_args: argparse.Namespace) -> int:
    try:
        text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"recohop config show-default: the built-in default {DEFAULT_CONFIG} cannot be read "
              f"({exc.strerror or exc}); this installation is incomplete", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
