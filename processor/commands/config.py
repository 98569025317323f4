"""`recohop config`: render the collector-chain templates, list their parameters, print the built-in default."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from processor import render, schema
from processor.assets import BUILTIN_PREFIX, builtin_file
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

    ref = sub.add_parser("reference", help="print the configuration reference (README's table) from the schema")
    ref.set_defaults(func=lambda _args: (sys.stdout.write(schema.markdown_table()), 0)[1])

    show = sub.add_parser("show-default", help="print the built-in default hop config (`recohop serve` with no --config)")
    show.add_argument("--out", type=Path, help="write it and the rule files it references into this directory, as a "
                                               "self-contained set to edit and run with `recohop serve --config`")
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


def run_show_default(args: argparse.Namespace) -> int:
    try:
        text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"recohop config show-default: the built-in default {DEFAULT_CONFIG} cannot be read "
              f"({exc.strerror or exc}); this installation is incomplete", file=sys.stderr)
        return 1
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        written = write_default_set(text, args.out)
    except OSError as exc:
        print(f"recohop config show-default: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


BUILTIN_REFERENCE = re.compile(re.escape(BUILTIN_PREFIX) + r"([A-Za-z0-9_./-]+)")


def write_default_set(text: str, out: Path) -> list[Path]:
    """The default config with each `builtin:<dir>/<file>` reference replaced by a copy `<dir>.yaml` beside it."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    copies: dict[str, str] = {}
    for name in dict.fromkeys(BUILTIN_REFERENCE.findall(text)):
        flat = name.split("/", 1)[0] + ".yaml"
        target = out / flat
        target.write_text(builtin_file(name).read_text(encoding="utf-8"), encoding="utf-8")
        written.append(target)
        copies[name] = flat
    config = BUILTIN_REFERENCE.sub(lambda m: copies[m.group(1)], text)
    hop = out / "hop.yaml"
    hop.write_text(config, encoding="utf-8")
    return [hop, *written]
