"""`recohop serve`: run the hop until SIGTERM/SIGINT, then flush and exit 0; SIGHUP reloads the rule files."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from processor.config import apply_overrides, load_config
from processor.hop import Hop
from processor.logformat import setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the hop")
    parser.add_argument("--config", help="hop config file (default: the built-in default pipeline)")
    parser.add_argument("--listen", help="OTLP/gRPC receiver endpoint HOST:PORT (overrides receiver.endpoint)")
    parser.add_argument("--http-listen", help="OTLP/HTTP receiver endpoint HOST:PORT, or 'off' "
                                              "(overrides receiver.http.endpoint)")
    parser.add_argument("--forward", help="next hop HOST:PORT, or file:PATH for the local file sink")
    parser.add_argument("--metrics-listen", help="/metrics endpoint HOST:PORT, or 'off'")
    parser.add_argument("--record", help="also write everything received (after redaction) to this capture file")
    parser.add_argument("--ready-file", help="write the bound ports here once serving (for scripts/tests)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = apply_overrides(load_config(args.config), args.listen, args.forward, args.metrics_listen,
                          args.record, http_listen=args.http_listen)
    setup_logging(cfg.telemetry.log_level, cfg.telemetry.log_format)
    if cfg.builtin_default:
        logging.getLogger("recohop").info("no --config given: running the built-in default pipeline")
    try:
        hop = Hop(cfg).start()
    except OSError as exc:  # a port in use: say which, without a traceback
        logging.getLogger("recohop").error("cannot start: %s", exc)
        return 1
    stop, reload, wake = threading.Event(), threading.Event(), threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: (stop.set(), wake.set()))
    # SIGHUP, which operators send out of habit, reloads the rule files instead of killing the hop.
    signal.signal(signal.SIGHUP, lambda *_: (reload.set(), wake.set()))
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"{hop.endpoint} {hop.metrics_port or ''}\n")
        os.replace(args.ready_file + ".tmp", args.ready_file)
    while not stop.is_set():
        wake.wait(1.0)
        wake.clear()
        if reload.is_set() and not stop.is_set():
            reload.clear()
            hop.reload(lambda: apply_overrides(load_config(args.config), args.listen, args.forward,
                                               args.metrics_listen, args.record, http_listen=args.http_listen))
    logging.getLogger("recohop").info("stopping: flushing stages and the export queue")
    clean = hop.stop()
    if not clean:
        logging.getLogger("recohop").warning("shutdown timeout reached with data still queued (counted)")
    return 0
