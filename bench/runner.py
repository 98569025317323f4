"""One benchmark run: every row measured the same way, in sequence, on this machine.

A row = a target (null sink, a hop process, rotel) fed by the client processes for `warmup + duration`
seconds; only calls acknowledged inside the `duration` window count. The null sink's request/byte counters,
the CPU time of every process and the hop's RSS are read at the window's edges.
"""

from __future__ import annotations

import importlib
import os
import platform
import queue
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench import procs
from bench.loadgen import ClientPlan, Clients
from bench.sink import read_stats
from bench.workload import Workload

STAGE_KINDS = ("limits", "redaction", "spanmetrics", "tail_sampling", "cardinality")
STAGES_DIR = procs.REPO_ROOT / "processor" / "stages"
BASE = "@base"  # suffix of the rows run on `Settings.against`
PASSTHROUGH_CONFIG = "# recohop pass-through: receive, parse, forward the original bytes\npipeline: []\n"


@dataclass
class Settings:
    duration: float
    warmup: float
    clients: int
    streams: int
    channels: int
    fresh_ids: bool
    workdir: Path
    rotel: bool = True
    auto_stages: bool = True
    builtin_default: bool = True
    hop_configs: list[tuple[str, Path]] = field(default_factory=list)
    repeat: int = 1
    only_rows: list[str] | None = None  # hop rows to run by name (None: every row)
    # Another checkout of recohop (its native scanners built in place): every hop row runs a second time right
    # after itself on that code, as `<row>@base`, so a change is measured against its base in the same run.
    against: Path | None = None


def parse_only(workload: Workload, duration: float) -> dict[str, Any]:
    """Row (a): `ExportTraceServiceRequest.FromString` over the workload in this process, one core."""
    parse = ExportTraceServiceRequest.FromString
    requests = workload.requests
    n = len(requests)
    count = total_spans = total_bytes = 0
    cpu0, began = time.process_time(), time.perf_counter()
    end = began + duration
    while time.perf_counter() < end:
        for i in range(n):
            parse(requests[i])
        count += n
        total_spans += workload.total_spans
        total_bytes += workload.total_bytes
    wall = time.perf_counter() - began
    return {"name": "parse_only", "kind": "in-process", "spans_per_s": total_spans / wall,
            "requests_per_s": count / wall, "wire_mb_per_s": total_bytes / wall / 1e6,
            "cpu_cores": {"bench": (time.process_time() - cpu0) / wall},
            "note": "FromString only, one thread (the Python/upb parse limit)"}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


def measure(name: str, kind: str, target: procs.Proc, sink: procs.Proc, workload_file: Path,
            workload: Workload, s: Settings, transport: str = "grpc") -> dict[str, Any]:
    """Drive `target` with the client processes and measure one window."""
    endpoint = target.http_endpoint if transport == "http" else target.endpoint
    assert endpoint is not None, f"{target.name} has no {transport} endpoint"
    plan = ClientPlan(endpoint=endpoint, workload=workload_file, spans=workload.spans,
                      streams=s.streams, channels=s.channels, warmup=s.warmup, duration=s.duration,
                      fresh_ids=s.fresh_ids, transport=transport)
    watched = {p.name: p for p in (target, sink)}
    clients = Clients(s.clients, plan)
    try:
        start = clients.launch()
        window_start = start + s.warmup
        time.sleep(max(0.0, window_start - time.monotonic()))
        sink0 = read_stats(sink.endpoint)
        cpu0 = {n: procs.cpu_seconds(p.pid) for n, p in watched.items()}
        metrics0 = _hop_metrics(target)
        threads0 = procs.thread_cpu(target.pid)
        busy0 = procs.machine_busy_seconds()
        time.sleep(max(0.0, window_start + s.duration - time.monotonic()))
        cpu1 = {n: procs.cpu_seconds(p.pid) for n, p in watched.items()}
        threads1 = procs.thread_cpu(target.pid)
        busy1 = procs.machine_busy_seconds()
        sink1 = read_stats(sink.endpoint)
        metrics1 = _hop_metrics(target)
        result = clients.collect()
    except BaseException:
        clients.close()
        raise
    rss = procs.rss_bytes(target.pid) if target.name != "sink" else None
    wall = s.duration
    cores = {n: (cpu1[n] - cpu0[n]) / wall for n in watched}
    cores["clients"] = result.cpu_seconds / wall
    cores["machine"] = (busy1 - busy0) / wall
    # Other work on the machine (anything not target, sink or clients), e.g. other jobs sharing the cores.
    cores["other"] = max(0.0, cores["machine"] - sum(v for k, v in cores.items() if k != "machine"))
    row: dict[str, Any] = {
        "name": name, "kind": kind,
        "spans_per_s": result.acked_spans / wall,
        "requests_per_s": result.acked_requests / wall,
        "wire_mb_per_s": result.sent_bytes / wall / 1e6,
        "acked_spans": result.acked_spans,
        "errors": result.errors,
        "latency_ms": {"p50": _ms(_percentile(result.latencies, 50)), "p99": _ms(_percentile(result.latencies, 99))},
        "sink": {"requests": int(sink1["requests"] - sink0["requests"]),
                 "bytes": int(sink1["bytes"] - sink0["bytes"]),
                 "mb_per_s": (sink1["bytes"] - sink0["bytes"]) / wall / 1e6,
                 # The sink does not parse: spans estimated from bytes at the workload's bytes/span.
                 "spans_per_s_est": (sink1["bytes"] - sink0["bytes"]) / wall
                 * workload.total_spans / workload.total_bytes},
        "cpu_cores": cores,
        "rss_bytes": rss,
        # Where the target's CPU went, by thread name (cores = CPU seconds per second).
        "target_thread_cores": {k: round((v - threads0.get(k, 0.0)) / wall, 3)
                                for k, v in sorted(threads1.items(), key=lambda kv: -kv[1])
                                if v - threads0.get(k, 0.0) > 0},
    }
    if target.name not in ("sink",):
        busy = cores.get(target.name, 0.0)
        row["spans_per_target_cpu_s"] = result.acked_spans / wall / busy if busy > 0 else None
    if metrics0 is not None and metrics1 is not None:
        row["stage_seconds_per_s"] = {k: (v - metrics0.get(k, 0.0)) / wall for k, v in metrics1.items()}
    return row


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _hop_metrics(target: procs.Proc) -> dict[str, float] | None:
    if not target.metrics_url:
        return None
    try:
        return procs.metric_sum(target.scrape(), "recohop_stage_seconds_total", "stage")
    except OSError:
        return None


def stage_kind_rows() -> tuple[list[tuple[str, str | None]], list[str]]:
    """(kind, reason to skip or None) for each stage kind whose module file exists; notes for the others."""
    rows: list[tuple[str, str | None]] = []
    notes: list[str] = []
    for kind in STAGE_KINDS:
        if not (STAGES_DIR / f"{kind}.py").exists():
            notes.append(f"stage {kind}: processor/stages/{kind}.py not present yet, row skipped")
            continue
        try:
            importlib.import_module(f"processor.stages.{kind}")
        except Exception as exc:  # a stage under construction must not stop the run
            reason = f"import failed ({type(exc).__name__}: {exc})"
            notes.append(f"stage {kind}: {reason}, row skipped")
            rows.append((kind, reason))
            continue
        rows.append((kind, None))
    return rows, notes


@dataclass
class HopRow:
    name: str
    config: Path | None  # None: the built-in default
    skip: str | None = None
    env: dict[str, str] | None = None  # extra environment for the hop process
    transport: str = "grpc"  # how the clients send: "grpc" or "http" (OTLP/HTTP protobuf)


def hop_rows(s: Settings, notes: list[str]) -> list[HopRow]:
    configs = s.workdir / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    passthrough = configs / "passthrough.yaml"
    passthrough.write_text(PASSTHROUGH_CONFIG)
    # The same pass-through over OTLP/HTTP (protobuf bodies): what the HTTP receiver costs against gRPC.
    rows = [HopRow("recohop_passthrough", passthrough), HopRow("recohop_passthrough_http", passthrough, transport="http")]
    if s.auto_stages:
        kinds, skipped = stage_kind_rows()
        notes.extend(skipped)
        for kind, reason in kinds:
            path = configs / f"stage_{kind}.yaml"
            path.write_text(f"# {kind} alone with its default settings\npipeline:\n  - type: {kind}\n")
            rows.append(HopRow(f"stage_{kind}", path, reason))
    if s.builtin_default:
        rows.append(HopRow("builtin_default", None))
        rows.append(HopRow("builtin_default_http", None, transport="http"))
        # The same pipeline on its pure-Python paths: what the native scanners (processor/native) bring.
        rows.append(HopRow("builtin_default_python", None, env={"RECOHOP_NATIVE": "0"}))
    rows.extend(HopRow(name, path) for name, path in s.hop_configs)
    if s.only_rows is not None:
        unknown = sorted(set(s.only_rows) - {r.name for r in rows})
        if unknown:
            raise ValueError(f"--rows: no hop row named {', '.join(unknown)} (rows: {', '.join(r.name for r in rows)})")
        rows = [r for r in rows if r.name in s.only_rows]
    if s.against is not None:
        rows = [twin for r in rows for twin in (r, HopRow(f"{r.name}{BASE}", r.config, r.skip,
                                                          {**(r.env or {}), "PYTHONPATH": str(s.against)},
                                                          r.transport))]
    return rows


def run_all(workload: Workload, workload_file: Path, s: Settings,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    log(f"(a) parse-only baseline, {s.duration:g}s")
    rows.append(parse_only(workload, s.duration))
    sink = procs.start_sink(s.workdir / "sink")
    try:
        log("client ceiling: clients -> null sink")
        rows.append(measure("client_ceiling", "null sink", sink, sink, workload_file, workload, s))
        for hop in hop_rows(s, notes):
            if hop.skip:
                rows.append(_skipped(hop.name, "hop", hop.skip))
                continue
            log(f"hop row {hop.name}")
            rows.append(_hop_row(hop.name, "hop", hop.config, sink, workload_file, workload, s, notes, hop.env,
                                 hop.transport))
            time.sleep(0.3)
        if s.rotel:
            log("(c) rotel pass-through")
            rows.append(_rotel_row(sink, workload_file, workload, s, notes))
    finally:
        sink.stop()
    return {"rows": rows, "ratios": ratios(rows), "notes": notes}


def _repeated(run: Callable[[], dict[str, Any]], times: int) -> dict[str, Any]:
    """Measure `times` windows on the same running target; keep the median one, list all."""
    rows = [run() for _ in range(max(1, times))]
    rows.sort(key=lambda r: r["spans_per_s"])
    median = rows[len(rows) // 2]
    if len(rows) > 1:
        median["repeats_spans_per_s"] = [r["spans_per_s"] for r in rows]
    return median


def _skipped(name: str, kind: str, reason: str) -> dict[str, Any]:
    return {"name": name, "kind": kind, "spans_per_s": None, "skipped": reason}


def _hop_row(name: str, kind: str, config: Path | None, sink: procs.Proc, workload_file: Path,
             workload: Workload, s: Settings, notes: list[str], env: dict[str, str] | None = None,
             transport: str = "grpc") -> dict[str, Any]:
    try:
        hop = procs.start_hop(s.workdir / name, name, config, sink.endpoint, env)
    except RuntimeError as exc:
        first = next((ln for ln in reversed(str(exc).splitlines()) if ln.strip()), str(exc))
        notes.append(f"{name}: hop did not start ({first.strip()[:200]}), row skipped")
        return _skipped(name, kind, first.strip()[:200])
    try:
        row = _repeated(lambda: measure(name, kind, hop, sink, workload_file, workload, s, transport), s.repeat)
        row["config"] = str(config) if config else "(built-in default)"
        row["transport"] = transport
        if not hop.alive():
            row["note"] = f"hop exited during the row: {hop.log_tail(5)}"
        return row
    except (OSError, RuntimeError, queue.Empty) as exc:  # a crashing hop must not lose the other rows
        reason = f"row failed: {type(exc).__name__}: {exc}; hop log: {hop.log_tail(3)}"[:300]
        notes.append(f"{name}: {reason}")
        return _skipped(name, kind, reason)
    finally:
        code = hop.stop()
        if code != 0:
            notes.append(f"{name}: hop exited with {code}")


def _rotel_row(sink: procs.Proc, workload_file: Path, workload: Workload, s: Settings,
               notes: list[str]) -> dict[str, Any]:
    try:
        rotel = procs.start_rotel(s.workdir / "rotel", sink.endpoint)
    except (RuntimeError, TimeoutError) as exc:
        notes.append(f"rotel_passthrough: {exc}")
        return _skipped("rotel_passthrough", "peer", str(exc)[:200])
    try:
        row = _repeated(lambda: measure("rotel_passthrough", "peer", rotel, sink, workload_file, workload, s),
                        s.repeat)
        row["note"] = "rotel re-batches (up to 8192 spans/request) and re-encodes before exporting"
        return row
    except (OSError, RuntimeError, queue.Empty) as exc:
        notes.append(f"rotel_passthrough: row failed: {exc}")
        return _skipped("rotel_passthrough", "peer", str(exc)[:200])
    finally:
        rotel.stop()


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    by = {r["name"]: r.get("spans_per_s") for r in rows}

    def ratio(a: str, b: str) -> float | None:
        x, y = by.get(a), by.get(b)
        return x / y if x and y else None

    out = {"passthrough/parse_only": ratio("recohop_passthrough", "parse_only"),
           "passthrough/rotel": ratio("recohop_passthrough", "rotel_passthrough"),
           "client_ceiling/passthrough": ratio("client_ceiling", "recohop_passthrough")}
    for r in rows:
        name = r["name"]
        base = name.endswith(BASE)
        if r["kind"] == "hop" and name.removesuffix(BASE) != "recohop_passthrough":
            # a base row against the base's own pass-through
            out[f"{name}/passthrough"] = ratio(name, "recohop_passthrough" + (BASE if base else ""))
        if base:
            out[f"{name.removesuffix(BASE)}/{name}"] = ratio(name.removesuffix(BASE), name)
    if "builtin_default" in by:
        out["builtin_default/parse_only"] = ratio("builtin_default", "parse_only")
        out["builtin_default/rotel"] = ratio("builtin_default", "rotel_passthrough")
        out["builtin_default/builtin_default_python"] = ratio("builtin_default", "builtin_default_python")
    if "recohop_passthrough_http" in by:  # OTLP/HTTP against gRPC, same pipeline, same run
        out["passthrough_http/passthrough"] = ratio("recohop_passthrough_http", "recohop_passthrough")
        out["builtin_default_http/builtin_default"] = ratio("builtin_default_http", "builtin_default")
    return out


def machine() -> dict[str, Any]:
    import google.protobuf
    import grpc
    from google.protobuf.internal import api_implementation

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    binary = procs.rotel_binary()
    rotel_version = None
    if binary is not None:
        rotel_version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                       timeout=10).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "grpcio": grpc.__version__, "protobuf": f"{google.protobuf.__version__} ({api_implementation.Type()})",
            "rotel": rotel_version, "platform": platform.platform()}


# ---------------------------------------------------------------- table

def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table(result: dict[str, Any]) -> str:
    head = ("row", "spans/s", "req/s", "MB/s", "target cores", "spans/cpu-s", "clients cores", "other cores",
            "RSS MiB", "p50 ms", "p99 ms", "sink req", "sink spans/s~", "errors")
    lines = []
    for r in result["rows"]:
        if r.get("skipped"):
            lines.append((r["name"], "skipped", *[""] * 11, r["skipped"][:60]))
            continue
        cores = r.get("cpu_cores", {})
        target = "bench" if r["name"] == "parse_only" else (
            "sink" if r["name"] == "client_ceiling" else ("rotel" if r["kind"] == "peer" else r["name"]))
        lat = r.get("latency_ms", {})
        lines.append((
            r["name"], _fmt(r["spans_per_s"]), _fmt(r.get("requests_per_s")), _fmt(r.get("wire_mb_per_s"), ".1f"),
            _fmt(cores.get(target), ".2f"), _fmt(r.get("spans_per_target_cpu_s")), _fmt(cores.get("clients"), ".2f"),
            _fmt(cores.get("other"), ".2f"),
            _fmt(r["rss_bytes"] / 2**20, ".0f") if r.get("rss_bytes") else "-",
            _fmt(lat.get("p50"), ".1f"), _fmt(lat.get("p99"), ".1f"),
            _fmt(r.get("sink", {}).get("requests"), "d") if r.get("sink") else "-",
            _fmt(r.get("sink", {}).get("spans_per_s_est")) if r.get("sink") else "-",
            ",".join(f"{k}:{v}" for k, v in (r.get("errors") or {}).items()) or "-",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths, strict=False)))
           for row in (head, *lines)]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    out.append("ratios:")
    for k, v in result["ratios"].items():
        out.append(f"  {k:<32} {_fmt(v, '.3f')}")
    if result.get("notes"):
        out.append("notes:")
        out.extend(f"  - {n}" for n in result["notes"])
    return "\n".join(out)
