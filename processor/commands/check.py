"""`recohop check FILE`: validate a hop config, including every stage and the files it references."""

from __future__ import annotations

import argparse

from prometheus_client import CollectorRegistry

from processor.config import load_config
from processor.pipeline import build_pipeline
from processor.stages.base import StageContext


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check", help="validate a hop config file")
    parser.add_argument("file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    # validate_only: a running hop's write-ahead log stays untouched (and locked by it).
    ctx = StageContext(registry=CollectorRegistry(), config_file=cfg.source, validate_only=True)
    pipeline = build_pipeline(cfg.stage_nodes, ctx, sink=lambda _emitted: None)
    stages = ", ".join(s.name for s in pipeline.stages) or "(no stages)"
    print(f"{args.file}: ok ({stages}; exporting to {cfg.exporter.endpoint or 'file:' + str(cfg.exporter.file.path)})")
    return 0
