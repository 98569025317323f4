"""`recohop route`: a trace-id router in front of several recohop instances (see processor/router.py)."""

from __future__ import annotations

import argparse
import signal
import threading

from processor.router import Router


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("route", help="split OTLP traffic by trace id over several recohop instances")
    parser.add_argument("--listen", default="127.0.0.1:4317")
    parser.add_argument("--backend", action="append", required=True, help="HOST:PORT of a recohop instance")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    router = Router(args.listen, args.backend).start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"routing 127.0.0.1:{router.port} by trace id over {len(args.backend)} backends", flush=True)
    while not stop.wait(0.5):
        pass
    router.stop()
    return 0
