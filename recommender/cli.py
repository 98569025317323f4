"""`python -m recommender simulate | serve | evaluate | sink | bench`: argument parsing only."""

from __future__ import annotations

import argparse
import json
import sys

from recommender.faults import Faults


def _faults(text: str) -> Faults:
    try:
        return Faults.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recommender", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sim = sub.add_parser("simulate", help="send recommendation traffic and write its ground truth")
    sim.add_argument("--endpoint", default="127.0.0.1:4317", help="OTLP gRPC HOST:PORT (the hop)")
    sim.add_argument("--rps", type=float, default=200.0)
    sim.add_argument("--duration", type=float, default=10.0, help="seconds of simulated traffic")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--faults", type=_faults, default=Faults(),
                     help="e.g. error=0.02,slow=0.03,cache_miss=0.3,timeout=0.02,drift=email,drift_start=0.5")
    sim.add_argument("--ground-truth", metavar="FILE", help="write the ground-truth JSON here")
    sim.add_argument("--dry-run", action="store_true", help="print the summary; send nothing")
    sim.add_argument("--pace", action="store_true",
                     help="spread requests over real time (default: as fast as possible, timestamps ending now)")
    sim.add_argument("--service-url", help="call a `serve` process over HTTP instead of in-process")
    sim.add_argument("--arrivals", choices=("poisson", "even"), default="poisson",
                     help="poisson (independent users) or even (constant offered load)")
    sim.add_argument("--metrics-listen", metavar="HOST:PORT",
                     help="serve the in-process service's model quality on /metrics while the run lasts")

    srv = sub.add_parser("serve", help="the recommendation service behind HTTP (for cross-process A/B)")
    srv.add_argument("--endpoint", default="127.0.0.1:4317")
    srv.add_argument("--port", type=int, default=0)
    srv.add_argument("--seed", type=int, default=0)
    srv.add_argument("--faults", type=_faults, default=Faults())
    srv.add_argument("--drift-after", type=float, default=0.0, help="seconds after start that drift begins")
    srv.add_argument("--metrics-listen", metavar="HOST:PORT",
                     help="serve the loaded models' offline quality and training time on /metrics (port 0: any)")

    ev = sub.add_parser("evaluate", help="offline NDCG/coverage/diversity per model version")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--k", type=int, default=10)
    ev.add_argument("--out", metavar="FILE", help="summary JSON")
    ev.add_argument("--prom", metavar="FILE", help="the same numbers as Prometheus text exposition")
    ev.add_argument("--ratings", metavar="CSV", help="evaluate on a MovieLens-style user,item,rating,timestamp file")
    snk = sub.add_parser("sink", help="a span-counting OTLP gRPC sink (for benchmarks)")
    snk.add_argument("--port", type=int, default=0)

    bench = sub.add_parser("bench", help="requests/s with full instrumentation on one core, OTLP to a sink")
    bench.add_argument("--requests", type=int, default=4000)
    bench.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        from recommender.quality import ModelQualityMetrics
        from recommender.simulate import run

        quality = ModelQualityMetrics() if args.metrics_listen else None
        if quality is not None:
            host = args.metrics_listen.rpartition(":")[0] or "127.0.0.1"
            print(f"metrics on {host}:{quality.serve(args.metrics_listen)}", flush=True)
        try:
            truth = run(None if args.dry_run else args.endpoint, args.rps, args.duration, args.seed, args.faults,
                        service_url=args.service_url, pace=args.pace, ground_truth=args.ground_truth,
                        dry_run=args.dry_run, quality=quality, arrivals=args.arrivals)
        finally:
            if quality is not None:
                quality.close()
        print(truth.summary())
        return 0
    if args.command == "serve":
        from recommender.http_service import serve

        return serve(args.endpoint, args.port, args.seed, args.faults, args.drift_after, args.metrics_listen)
    if args.command == "evaluate":
        from recommender.evaluate import offline_summary, prometheus_text, write_summary

        summary = offline_summary(_eval_world(args.seed, args.ratings), args.seed, args.k)
        if args.out:
            write_summary(summary, args.out)
        if args.prom:
            with open(args.prom, "w", encoding="utf-8") as fh:
                fh.write(prometheus_text(summary))
        print(json.dumps(summary["models"], indent=2, sort_keys=True))
        return 0
    if args.command == "sink":
        from recommender.sink import main as sink_main

        return sink_main(args.port)
    if args.command == "bench":
        from recommender.bench import run_bench

        print(json.dumps(run_bench(args.requests, args.seed), indent=2))
        return 0
    build_parser().print_help()
    return 2


def _eval_world(seed: int, ratings: str | None):  # noqa: ANN202 (World, imported lazily)
    from recommender.data import generate, world_from_ratings

    return world_from_ratings(ratings, seed) if ratings else generate(seed)


if __name__ == "__main__":
    sys.exit(main())
