"""`python -m bench all --duration 20` (the full run) and `python -m bench smoke` (a few seconds, for CI:
every row runs, nothing about speed is asserted). Prints the table and writes JSON (`--out`).
`python -m bench peer` runs otelcol-contrib and recohop on the same job (bench/peer.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import peer, runner, sink
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
    p.add_argument("--rows", type=lambda t: [n for n in t.split(",") if n], metavar="NAME,NAME",
                   help="hop rows to run, by name (e.g. recohop_passthrough,builtin_default); default: all")
    p.add_argument("--repeat", type=int, default=1,
                   help="windows per hop/rotel row (same process); the median is reported, all are kept")
    p.add_argument("--out", type=Path, default=Path("bench-out/results.json"))
    p.add_argument("--workdir", type=Path, help="logs, configs, workload (default: next to --out)")
    p.add_argument("--against", type=_checkout, metavar="DIR",
                   help="another recohop checkout (e.g. a `git worktree` with `python setup.py build_ext --inplace` "
                        "run in it): each hop row also runs on its code, right after, as ROW@base")


def _checkout(text: str) -> Path:
    path = Path(text).resolve()
    if not (path / "processor" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a recohop checkout (no processor/__init__.py)")
    return path


def _seconds(text: str) -> int:
    """Whole seconds (`10`, `10s`): the collector's decision batches are one second each."""
    value = text[:-1] if text.endswith("s") else text
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected whole seconds >= 1 such as 10s, got {text!r}")
    return int(value)


def _add_peer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="unmeasured seconds before each window (the sampler's buffer fills in root_grace + 1 s)")
    p.add_argument("--repeat", type=int, default=1, help="windows per row (same process); the median is shown")
    p.add_argument("--clients", type=int, default=1, help="client processes (they share the 2 cores)")
    p.add_argument("--streams", type=int, default=8, help="concurrent calls per client process")
    p.add_argument("--channels", type=int, default=2, help="gRPC channels (connections) per client")
    p.add_argument("--spans-per-request", type=int, default=800)
    p.add_argument("--requests", type=int, default=64, help="distinct requests in the generated workload")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--decision-wait", type=_seconds, default=10, help="both samplers (recohop's default 10s)")
    p.add_argument("--root-grace", type=_seconds, default=2,
                   help="both: recohop root_grace, otelcol decision_wait_after_root_received (default 2s)")
    p.add_argument("--headroom", type=float, default=1.25,
                   help="fitting budgets hold decision_wait x this of the system's pass-through rate")
    p.add_argument("--binding-fraction", type=float, default=0.5,
                   help="binding budgets hold this share of the traces of one root_grace at the full rate")
    p.add_argument("--no-binding", action="store_true", help="skip the budget-binding table")
    p.add_argument("--no-agreement", action="store_true", help="skip the agreement runs")
    p.add_argument("--stages", action="store_true", help="also the collector's components one at a time")
    p.add_argument("--agreement-requests", type=int, default=200,
                   help="requests of the fixed-id agreement workload, each sent once")
    p.add_argument("--only", choices=("otelcol", "recohop"), help="run one system's rows only")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                   help="before each row wait for an idle machine, at most this long over the run (0: never)")
    p.add_argument("--out", type=Path, default=Path("bench-out/peer.json"))
    p.add_argument("--workdir", type=Path, help="logs, configs, workload (default: next to --out)")


def run_peer(args: argparse.Namespace, argv: list[str] | None) -> int:
    workdir = (args.workdir or args.out.parent / "peer-work").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workload = generate(args.requests, args.spans_per_request, args.seed)
    workload_file = workdir / "workload.bin"
    write_workload(workload_file, workload.requests)
    settings = peer.PeerSettings(
        duration=args.duration, warmup=args.warmup, clients=args.clients, streams=args.streams,
        channels=args.channels, fresh_ids=True, workdir=workdir, repeat=args.repeat,
        decision_wait=args.decision_wait, root_grace=args.root_grace, headroom=args.headroom,
        binding_fraction=args.binding_fraction, binding=not args.no_binding, agreement=not args.no_agreement, stages=args.stages,
        agreement_requests=args.agreement_requests, quiet_wait=args.quiet_wait,
        systems=(args.only,) if args.only else ("otelcol", "recohop"))
    print(f"workload: {len(workload.requests)} requests, {workload.total_spans} spans, {workload.traces} traces "
          f"({workload.total_spans / workload.traces:.2f} spans/trace), {workload.special_traces} special; "
          f"load average {Path('/proc/loadavg').read_text().split()[0]}", flush=True)
    began = time.time()
    load_at_start = Path("/proc/loadavg").read_text().strip()
    result = peer.run_peer(workload, workload_file, settings, log=lambda m: print(m, file=sys.stderr, flush=True))
    result = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "peer",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
        "machine": peer.peer_machine(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": Path("/proc/loadavg").read_text().strip(),
        "settings": {"duration": args.duration, "warmup": args.warmup, "repeat": args.repeat,
                     "clients": args.clients, "streams": args.streams, "channels": args.channels,
                     "decision_wait_s": args.decision_wait, "root_grace_s": args.root_grace,
                     "headroom": args.headroom, "binding_fraction": args.binding_fraction},
        "workload": {"requests": len(workload.requests), "spans": workload.total_spans,
                     "bytes": workload.total_bytes, "traces": workload.traces,
                     "special_traces": workload.special_traces},
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(peer.table(result))
    print(f"\nload average at start {load_at_start}, at end {result['loadavg_at_end']}; "
          f"waited {result['quiet_waited_s']:.0f} s for a quiet machine")
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    _add_run_args(sub.add_parser("all", help="every row, full length"), duration=20.0, warmup=2.0, requests=64)
    _add_run_args(sub.add_parser("smoke", help="every row, a few seconds (CI)"), duration=0.6, warmup=0.3,
                  requests=6)
    _add_peer_args(sub.add_parser("peer", help="otelcol-contrib vs recohop doing the same job (bench/peer.py)"))
    s = sub.add_parser("sink", help="(internal) run the null sink")
    s.add_argument("--listen", default="127.0.0.1:0")
    s.add_argument("--ready-file", required=True)
    s.add_argument("--capture", type=Path, help="ground-truth JSON: parse trace requests, record kept traces")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "sink":
        sink.serve(args.listen, args.ready_file, capture=args.capture)
        return 0
    if args.mode == "peer":
        return run_peer(args, argv)
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
        auto_stages=not args.no_stages, builtin_default=not args.no_default, hop_configs=args.hop_config, repeat=args.repeat,
        only_rows=args.rows, against=args.against)
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
