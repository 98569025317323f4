"""`recohop replay --policies FILE CAPTURE`: dry-run a policy file on a capture and report what it would keep.

A capture is the file sink's / `serve --record` OTLP/JSON lines (one export request per line; traces and logs
are used, metrics skipped), or length-delimited binary ExportTraceServiceRequest messages (varint length, then
the message). The real tail-sampling stage runs on a frozen clock, every trace is decided at the end with all
its data, and nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from processor import otlpjson
from processor.assets import BUILTIN_PREFIX
from processor.config_node import ConfigError, Node
from processor.stages.base import StageContext, as_trace_message
from processor.stages.tail_sampling import build

Request = ExportTraceServiceRequest | ExportLogsServiceRequest


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("replay", help="dry-run tail-sampling policies on a capture")
    parser.add_argument("--policies", required=True,
                        help="policy file to evaluate (builtin:policies/default.yaml is the shipped default)")
    parser.add_argument("--max-bytes", default="1GiB", help="trace buffer budget (default 1GiB)")
    parser.add_argument("capture", help="OTLP JSON lines or length-delimited binary traces capture")
    parser.set_defaults(func=run)


def read_capture(path: Path) -> Iterator[Request]:
    data = path.read_bytes()
    if data.lstrip()[:1] == b"{":
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                keys = json.loads(line).keys()
            except (ValueError, AttributeError):
                raise ConfigError(path, f"line {number}", "one OTLP JSON export request per line") from None
            if "resourceSpans" in keys:
                yield otlpjson.loads(line, ExportTraceServiceRequest())
            elif "resourceLogs" in keys:
                yield otlpjson.loads(line, ExportLogsServiceRequest())
        return
    at = 0
    while at < len(data):
        size = shift = 0
        while True:
            if at >= len(data):
                raise ConfigError(path, f"byte {at}", "a varint length prefix")
            byte = data[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if at + size > len(data):
            raise ConfigError(path, f"byte {at}", f"{size} bytes of an ExportTraceServiceRequest (file truncated)")
        yield ExportTraceServiceRequest.FromString(data[at:at + size])
        at += size


@dataclass
class Report:
    traces: set[bytes] = field(default_factory=set)
    spans: Counter[bytes] = field(default_factory=Counter)
    logs: Counter[bytes] = field(default_factory=Counter)
    logs_without_trace: int = 0
    bytes_in: int = 0


def _tally(request: Request, report: Report) -> None:
    report.bytes_in += request.ByteSize()
    if isinstance(request, ExportTraceServiceRequest):
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    report.spans[span.trace_id] += 1
                    report.traces.add(span.trace_id)
    else:
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    if len(record.trace_id) == 16 and any(record.trace_id):
                        report.logs[record.trace_id] += 1
                        report.traces.add(record.trace_id)
                    else:
                        report.logs_without_trace += 1


def run(args: argparse.Namespace) -> int:
    ctx = StageContext(registry=CollectorRegistry(), clock=lambda: 0.0)
    policies = args.policies if args.policies.startswith(BUILTIN_PREFIX) else str(Path(args.policies).resolve())
    stage = build(Node({"policies": policies, "max_bytes": args.max_bytes},
                       "<command line>"), ctx)
    decided: dict[bytes, tuple[bool, str]] = {}
    ctx.decisions.subscribe(lambda tid, kept, policy: decided.__setitem__(tid, (kept, policy)))
    seen, out = Report(), Report()
    for request in read_capture(Path(args.capture)):
        _tally(request, seen)
        results = stage.on_traces(request) if isinstance(request, ExportTraceServiceRequest) else \
            stage.on_logs(request)
        for result in results:
            _tally(result, out)
    final = stage.shutdown()
    for result in [*(as_trace_message(t) for t in (final.traces if final else [])), *(final.logs if final else [])]:
        _tally(result, out)
    print_report(args.capture, args.policies, seen, out, decided)
    return 0


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f} %" if whole else "n/a"


def print_report(capture: str, policies: str, seen: Report, out: Report,
                 decided: dict[bytes, tuple[bool, str]]) -> None:
    nspans, nlogs = sum(seen.spans.values()), sum(seen.logs.values())
    print(f"capture {capture}: {len(seen.traces)} traces, {nspans} spans, {nlogs} logs with a trace id, "
          f"{seen.logs_without_trace} logs without, {seen.bytes_in} bytes")
    print(f"policies {policies} (dry run: nothing sent)")
    rows: dict[tuple[str, str], list[int]] = {}
    for tid, (kept, policy) in decided.items():
        row = rows.setdefault(("keep" if kept else "drop", policy), [0, 0, 0])
        row[0] += 1
        row[1] += seen.spans.get(tid, 0)
        row[2] += seen.logs.get(tid, 0)
    print(f"  {'decision':8s} {'policy':28s} {'traces':>9s} {'spans':>10s} {'logs':>8s}")
    for (decision, policy), (traces, spans, logs) in sorted(rows.items(), key=lambda kv: (kv[0][0] != "keep",
                                                                                          -kv[1][0])):
        print(f"  {decision:8s} {policy:28s} {traces:9d} {spans:10d} {logs:8d}")
    kept_traces = sum(1 for kept, _ in decided.values() if kept)
    kept_spans, kept_logs = sum(out.spans.values()), sum(out.logs.values())
    print(f"kept: {kept_traces} of {len(decided)} traces ({_pct(kept_traces, len(decided))}), "
          f"{kept_spans} of {nspans} spans ({_pct(kept_spans, nspans)}), "
          f"{kept_logs} of {nlogs} trace logs; {out.logs_without_trace} logs without trace id passed")
    print(f"keep ratio (traces): {kept_traces / len(decided) if decided else 0:.4f}")
    print(f"estimated output: {out.bytes_in} bytes ({_pct(out.bytes_in, seen.bytes_in)} of input)")
