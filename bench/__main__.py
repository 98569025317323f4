"""`python -m bench all --duration 20` (the full run) and `python -m bench smoke` (a few seconds, for CI:
every row runs, nothing about speed is asserted). Prints the table and writes JSON (`--out`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import runner, sink
from bench.workload import generate, load_workload, write_workload


def _hop_config(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such hop config file")
    return name, Path(path)


def _add_run_args(p: argparse.ArgumentParser, duration: float, warmup: float, requests: int) -> None:
    p.add_argument("--duration", type=float, default=duration, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=warmup, help="unmeasured seconds before each window")
    p.add_argument("--clients", type=int, default=1, help="client processes (they share the 2 cores)")
    p.add_argument("--streams", type=int, default=8, help="concurrent calls per client process")
    p.add_argument("--channels", type=int, default=2, help="gRPC channels (connections) per client")
    p.add_argument("--spans-per-request", type=int, default=800)
    p.add_argument("--requests", type=int, default=requests, help="distinct requests in a generated workload")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workload", type=Path,
                   help="replay this file of length-delimited ExportTraceServiceRequest bytes instead")
    p.add_argument("--no-fresh-ids", action="store_true",
                   help="replay byte-identical requests (default: new trace ids on every replay)")
    p.add_argument("--hop-config", type=_hop_config, action="append", default=[], metavar="NAME=FILE",
                   help="extra row: a hop running this config (repeatable)")
    p.add_argument("--no-rotel", action="store_true", help="skip the rotel row")
    p.add_argument("--no-stages", action="store_true", help="skip the automatic per-stage rows")
    p.add_argument("--no-default", action="store_true", help="skip the built-in default config row")
    p.add_argument("--repeat", type=int, default=1,
                   help="windows per hop/rotel row (same process); the median is reported, all are kept")
    p.add_argument("--out", type=Path, default=Path("bench-out/results.json"))
    p.add_argument("--workdir", type=Path, help="logs, configs, workload (default: next to --out)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    _add_run_args(sub.add_parser("all", help="every row, full length"), duration=20.0, warmup=2.0, requests=64)
    _add_run_args(sub.add_parser("smoke", help="every row, a few seconds (CI)"), duration=0.6, warmup=0.3,
                  requests=6)
    s = sub.add_parser("sink", help="(internal) run the null sink")
    s.add_argument("--listen", default="127.0.0.1:0")
    s.add_argument("--ready-file", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "sink":
        sink.serve(args.listen, args.ready_file)
        return 0
    workdir = (args.workdir or args.out.parent / "work").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.workload:
        workload_file = args.workload.resolve()
        workload = load_workload(workload_file)
    else:
        workload = generate(args.requests, args.spans_per_request, args.seed)
        workload_file = workdir / "workload.bin"
        write_workload(workload_file, workload.requests)
    settings = runner.Settings(
        duration=args.duration, warmup=args.warmup, clients=args.clients, streams=args.streams,
        channels=args.channels, fresh_ids=not args.no_fresh_ids, workdir=workdir, rotel=not args.no_rotel,
        auto_stages=not args.no_stages, builtin_default=not args.no_default, hop_configs=args.hop_config, repeat=args.repeat)
    print(f"workload: {len(workload.requests)} requests, {workload.total_spans} spans "
          f"(~{workload.total_spans / len(workload.requests):.0f}/request, "
          f"{workload.total_bytes / workload.total_spans:.0f} wire bytes/span), {workload.traces} traces, "
          f"{workload.special_traces} special", flush=True)
    began = time.time()
    result = runner.run_all(workload, workload_file, settings, log=lambda m: print(m, file=sys.stderr, flush=True))
    result = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": args.mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
        "machine": runner.machine(),
        "settings": {"duration": args.duration, "warmup": args.warmup, "clients": args.clients,
                     "streams": args.streams, "channels": args.channels, "fresh_ids": not args.no_fresh_ids,
                     "repeat": args.repeat},
        "workload": {"file": str(workload_file), "requests": len(workload.requests),
                     "spans": workload.total_spans, "bytes": workload.total_bytes, "traces": workload.traces,
                     "special_traces": workload.special_traces,
                     "spans_per_request": workload.total_spans / len(workload.requests)},
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(runner.table(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
