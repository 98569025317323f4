"""`recohop demo`: the README's main job (see processor/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from processor.demo import DEMO_FAULTS, run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="recommender traffic through the default hop, dashboards, report")
    parser.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument("--rps", type=float, default=60.0, help="recommendation requests per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--faults", default=DEMO_FAULTS, help=f"simulator faults (default {DEMO_FAULTS})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = run_demo(Path(args.out), args.duration, args.rps, args.seed, args.faults,
                          progress=lambda text: print(text, flush=True))
    except KeyboardInterrupt:
        print("\ninterrupted: hop, Prometheus and the simulator were stopped", flush=True)
        return 130
    print()
    print(result.report)
    print(f"report written to {result.report_path}")
    return 0
