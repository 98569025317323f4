"""`python -m bench peer`: otelcol-contrib and recohop doing the same job, on the same workload, with the same
client, in the same run (issue 22, part 1).

Rows, each a separate target process forwarding to the null sink (bench/sink.py):
- pass-through: the collector (memory_limiter + batch, bench/peer_otelcol_passthrough.yaml) and recohop
  (`pipeline: []`);
- the full job: the collector's equivalent pipeline (bench/peer_otelcol.yaml: tail_sampling, redaction,
  span_metrics) and recohop's built-in default pipeline, both with the same decision_wait and root grace,
  and buffer budgets that fit decision_wait of the most traffic either could take (its own pass-through
  rate): no row wins by deciding early;
- the same with the budget binding (each buffer holds a fraction of what its own traffic needs over the root
  grace): early decisions (recohop) and traces evicted before a decision (the collector) are counted, and a
  capture-mode sink counts the special traces each kept;
- agreement: a bounded workload with fixed trace ids sent once through each full pipeline; both must keep
  every error, fallback, cold-start and slow trace, and the 1 % baselines are compared (the collector with
  its default FNV hash, and with the usetracestate feature gate that applies the consistent-probability rule).

Per row: spans/s, target CPU-seconds per million spans, RSS, RSS per buffered span ((RSS - idle RSS of the
same process) / spans buffered at that moment, from each sampler's own gauge), p50/p99 acknowledgement
latency, decisions in the window and the share made on time (root grace or decision_wait) vs forced by the
budget.
"""

from __future__ import annotations

import json
import math
import queue
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench import procs
from bench.loadgen import ClientPlan, Clients
from bench.runner import PASSTHROUGH_CONFIG, _ms, _percentile, machine
from bench.sink import read_kept, read_stats
from bench.workload import Workload, generate, write_workload
from processor.sampling.consistent import rejection_threshold
from processor.signals import METHOD_PATHS

BENCH_DIR = Path(__file__).resolve().parent
OTELCOL_FULL = BENCH_DIR / "peer_otelcol.yaml"
OTELCOL_PASSTHROUGH = BENCH_DIR / "peer_otelcol_passthrough.yaml"
USE_TRACESTATE_GATE = "processor.tailsamplingprocessor.usetracestate"
# Tracestate on every span of the agreement workload: sampled upstream at 100 % by a consistent sampler. It
# tells the collector (with the feature gate) to decide from the trace id's randomness, as recohop does.
AGREEMENT_TRACESTATE = "ot=th:0"
SPECIAL_KINDS = ("error", "fallback", "cold_start", "slow")
BASELINE_PERCENT = 1.0
# Rate assumed for sizing when a system's pass-through row did not run (spans/s, above either's pass-through).
FALLBACK_RATE = 1_500_000.0
# Reads from the sink and the targets' metrics: generous, since other jobs may load the machine.
STATS_TIMEOUT = 20.0
# RSS per buffered span is reported only for samples with at least this many spans buffered.
MIN_BUFFERED_SPANS = 10_000
_PLACEHOLDER = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")


@dataclass
class PeerSettings:
    duration: float
    warmup: float
    clients: int
    streams: int
    channels: int
    fresh_ids: bool
    workdir: Path
    repeat: int = 1
    decision_wait: int = 10  # seconds, both samplers (recohop's default)
    root_grace: int = 2  # seconds, both (recohop root_grace; otelcol decision_wait_after_root_received)
    headroom: float = 1.25  # budgets fit decision_wait x this x the pass-through rate
    binding_fraction: float = 0.5  # binding budget: this share of (full-row traces/s x root_grace)
    decision_cache: int = 200_000  # recohop decision_cache_size; otelcol's two LRU caches get half each
    binding: bool = True
    stages: bool = False  # otelcol rows with one component of the job alone
    agreement: bool = True
    agreement_requests: int = 200
    agreement_seed: int = 11
    systems: tuple[str, ...] = ("otelcol", "recohop")
    # Before each row, wait (at most this many seconds over the whole run) until the machine is idle: other
    # work below `quiet_cores` busy cores. 0: do not wait (the other-cores column still shows the load).
    quiet_wait: float = 0.0
    quiet_cores: float = 0.15
    waited: float = 0.0


@dataclass
class Budget:
    """A tail-sampling buffer budget, the same for both: traces (otelcol num_traces, recohop max_traces)."""

    traces: int
    max_bytes: int  # recohop only: its byte budget, sized never to bind before the trace budget
    block: bool = False  # otelcol block_on_overflow (back-pressure instead of evicting the oldest trace)
    why: str = ""


@dataclass
class RowSpec:
    name: str
    system: str  # "otelcol" | "recohop"
    full: bool
    budget: Budget | None = None
    table: str = "main"
    feature_gates: list[str] = field(default_factory=list)
    variant: str | None = None  # otelcol: one component of the full config alone (OTELCOL_STAGES)


# ---------------------------------------------------------------- configs

# The collector's components of the full job, each alone in front of the sink (everything passes through
# except what the component itself drops), like the stage rows of `python -m bench all`.
OTELCOL_STAGES: dict[str, dict[str, Any]] = {
    "tail_sampling": {"traces": {"receivers": ["otlp"], "processors": ["memory_limiter", "tail_sampling", "batch"],
                                 "exporters": ["otlp_grpc/sink"]}},
    "redaction": {"traces": {"receivers": ["otlp"],
                             "processors": ["memory_limiter", "redaction", "transform/generalise_ip", "batch"],
                             "exporters": ["otlp_grpc/sink"]}},
    # The same without the value detectors (blocked_values): what the eight regexes cost.
    "redaction_keys_only": {"traces": {"receivers": ["otlp"],
                                       "processors": ["memory_limiter", "redaction/keys_only", "transform/generalise_ip",
                                                      "batch"],
                                       "exporters": ["otlp_grpc/sink"]}},
    "spanmetrics": {"traces": {"receivers": ["otlp"], "processors": ["memory_limiter", "batch"],
                               "exporters": ["otlp_grpc/sink", "span_metrics"]},
                    "metrics/spanmetrics": {"receivers": ["span_metrics"], "processors": ["batch"],
                                            "exporters": ["otlp_grpc/sink"]}},
}

def render_otelcol(template: Path, values: dict[str, Any]) -> str:
    """Fill the ${name} placeholders (lower-case names only: ${env:...} is the collector's)."""
    text = template.read_text()
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
    if missing:
        raise KeyError(f"{template}: no value for placeholders {missing}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def otelcol_variant(rendered: str, variant: str) -> str:
    """The rendered full config with only one component's pipelines (the others stay defined, unused)."""
    config = yaml.safe_load(rendered)
    config["service"]["pipelines"] = OTELCOL_STAGES[variant]
    if variant == "redaction_keys_only":
        config["processors"]["redaction/keys_only"] = {k: v for k, v in config["processors"]["redaction"].items()
                                                       if k != "blocked_values"}
    if variant != "spanmetrics":
        config.pop("connectors", None)  # a connector must be used by a pipeline
    return f"# bench/peer_otelcol.yaml with the {variant} component alone\n" + yaml.safe_dump(config, sort_keys=False)


def recohop_full_config(s: PeerSettings, budget: Budget) -> str:
    """recohop's built-in default configuration with the benchmark's tail-sampling settings: the same
    decision_wait/root_grace as the collector row and the row's budget; everything else as shipped."""
    shown = subprocess.run([*_recohop_cmd(), "config", "show-default"], capture_output=True, text=True,
                           check=True, cwd=procs.REPO_ROOT, env=procs._env(hop=True)).stdout
    config = yaml.safe_load(shown)
    config["receiver"]["http"] = {"endpoint": "off"}  # gRPC only, as the collector rows
    for stage in config["pipeline"]:
        if stage["type"] == "tail_sampling":
            stage.update(decision_wait=f"{s.decision_wait}s", root_grace=f"{s.root_grace}s",
                         max_traces=budget.traces, max_bytes=budget.max_bytes,
                         decision_cache_size=s.decision_cache)
    head = (f"# recohop built-in default pipeline for `python -m bench peer` ({budget.why}).\n"
            "# Pseudonym key from RECOHOP_PSEUDONYM_KEY (set by the harness, shared with the collector).\n")
    return head + yaml.safe_dump(config, sort_keys=False)


def _recohop_cmd() -> list[str]:
    return [sys.executable, "-m", "processor"]


def _scrape(proc: procs.Proc) -> str:
    """The target's Prometheus text (recohop's /metrics or the collector's telemetry endpoint)."""
    assert proc.metrics_url
    with urllib.request.urlopen(proc.metrics_url, timeout=STATS_TIMEOUT) as resp:
        return resp.read().decode()


# ---------------------------------------------------------------- sampler probes (each from its own metrics)

@dataclass
class Probe:
    """What a tail sampler reports about itself at one moment (counters cumulative)."""

    buffered_traces: float = 0.0
    decided: float = 0.0  # traces decided (kept or dropped)
    forced: float = 0.0  # recohop: decided early (budget); otelcol: evicted before its decision
    on_time: float = 0.0  # decisions whose trace waited no longer than decision_wait (histogram bucket)
    age_sum: float = 0.0  # seconds from a trace's first span to its decision, summed
    age_count: float = 0.0

    def minus(self, other: Probe) -> Probe:
        return Probe(self.buffered_traces, self.decided - other.decided, self.forced - other.forced,
                     self.on_time - other.on_time, self.age_sum - other.age_sum, self.age_count - other.age_count)


def _bucket_at(text: str, name: str, bound: float) -> float:
    """Cumulative count of a histogram's bucket le == bound (NaN when there is no such bucket edge)."""
    for le, value in procs.metric_sum(text, name, "le").items():
        try:
            if float(le) == bound:
                return value
        except ValueError:
            continue
    return math.nan


def _total(text: str, name: str) -> float:
    return sum(procs.metric_sum(text, name).values())


def recohop_probe(text: str, decision_wait: float) -> Probe:
    hist = "recohop_sampling_decision_latency_seconds"
    return Probe(buffered_traces=_total(text, "recohop_sampling_buffer_traces"),
                 decided=_total(text, "recohop_sampling_decisions_total"),
                 forced=_total(text, "recohop_sampling_decided_early_total"),
                 on_time=_bucket_at(text, hist + "_bucket", decision_wait),
                 age_sum=_total(text, hist + "_sum"), age_count=_total(text, hist + "_count"))


def otelcol_probe(text: str, decision_wait: float) -> Probe:
    # Buffered = traces received - decided - evicted undecided: all three are counted by the decision
    # goroutine, so between ticks this is exact (the sampling_traces_on_memory gauge is written right after
    # each 1 s tick has decided its batch: the low point of the sawtooth). With decision caches the collector
    # removes a trace right after deciding it, so the removal age (whole seconds, truncated) is its decision
    # age; evicted traces are removed too. The exposition has no _total/unit suffixes for these.
    prefix = "otelcol_processor_tail_sampling_"
    hist = prefix + "sampling_trace_removal_age"
    decided = _total(text, prefix + "global_count_traces_sampled")
    evicted = _total(text, prefix + "sampling_trace_dropped_too_early")
    return Probe(buffered_traces=max(0.0, _total(text, prefix + "new_trace_id_received") - decided - evicted),
                 decided=decided, forced=evicted,
                 on_time=_bucket_at(text, hist + "_bucket", decision_wait),
                 age_sum=_total(text, hist + "_sum"), age_count=_total(text, hist + "_count"))


# ---------------------------------------------------------------- one row

@dataclass
class Running:
    spec: RowSpec
    proc: procs.Proc
    probe: Callable[[str], Probe] | None  # the sampler's state from its metrics text (full rows)
    idle_rss: int


def start_row(spec: RowSpec, sink: procs.Proc, s: PeerSettings, key: str) -> Running:
    work = s.workdir / spec.name
    work.mkdir(parents=True, exist_ok=True)
    if spec.system == "otelcol":
        otlp, health, telemetry = procs.free_port(), procs.free_port(), procs.free_port()
        budget = spec.budget
        values = {"otlp_endpoint": f"127.0.0.1:{otlp}", "health_endpoint": f"127.0.0.1:{health}",
                  "telemetry_port": telemetry, "sink_endpoint": sink.endpoint}
        if spec.full:
            assert budget is not None
            values.update(decision_wait=f"{s.decision_wait}s", root_grace=f"{s.root_grace}s",
                          num_traces=budget.traces,
                          expected_new_traces_per_sec=max(1, budget.traces // max(1, s.decision_wait)),
                          block_on_overflow=str(budget.block).lower(),
                          decision_cache_half=s.decision_cache // 2)
        text = render_otelcol(OTELCOL_FULL if spec.full else OTELCOL_PASSTHROUGH, values)
        if spec.variant:
            text = otelcol_variant(text, spec.variant)
        proc = procs.start_otelcol(work, spec.name, text, f"127.0.0.1:{otlp}", health, telemetry,
                                   env={"PEER_HMAC_KEY": key}, feature_gates=spec.feature_gates)
        probe_fn = otelcol_probe
    else:
        config = work / "recohop.yaml"
        if spec.full:
            assert spec.budget is not None
            config.write_text(recohop_full_config(s, spec.budget))
        else:
            config.write_text(PASSTHROUGH_CONFIG)
        proc = procs.start_hop(work, spec.name, config, sink.endpoint, env={"RECOHOP_PSEUDONYM_KEY": key})
        probe_fn = recohop_probe
    time.sleep(1.0)  # settle before reading the idle RSS
    probe = None
    if spec.full and proc.metrics_url and spec.variant in (None, "tail_sampling"):
        cap = float(spec.budget.traces) if spec.budget else math.inf

        def probe(text: str) -> Probe:
            found = probe_fn(text, float(s.decision_wait))
            # The collector counts an eviction only when the evicted trace's decision tick comes (~root_grace
            # later); its trace map never holds more than num_traces.
            found.buffered_traces = min(found.buffered_traces, cap)
            return found
    return Running(spec, proc, probe, procs.rss_bytes(proc.pid))


def measure(run: Running, sink: procs.Proc, workload_file: Path, workload: Workload,
            s: PeerSettings) -> dict[str, Any]:
    """One window of `s.duration` after `s.warmup`, driven by the client processes. RSS is sampled at 1/2, 3/4
    and the end of the window; RSS per buffered span uses the buffered traces at the same moment: at the
    window's end for recohop (its gauge is exact at any time), at all three for the collector."""
    plan = ClientPlan(endpoint=run.proc.endpoint, workload=workload_file, spans=workload.spans,
                      streams=s.streams, channels=s.channels, warmup=s.warmup, duration=s.duration,
                      fresh_ids=s.fresh_ids, fresh_right_half=True)
    clients = Clients(s.clients, plan)
    marks: dict[str, Any] = {}
    samples: list[tuple[int, float]] = []  # (RSS, buffered traces) at the same moment
    rss_samples: list[int] = []

    def scrape() -> str:
        return _scrape(run.proc) if run.proc.metrics_url and (run.probe or run.spec.system == "recohop") else ""

    def read_target(tag: str) -> None:
        """One scrape for both the sampler's counters and recohop's stage seconds."""
        text = scrape()
        marks["t" + tag] = time.monotonic()
        marks["probe" + tag] = run.probe(text) if run.probe and text else None
        marks["stages" + tag] = (procs.metric_sum(text, "recohop_stage_seconds_total", "stage")
                                 if run.spec.system == "recohop" and text else {})

    def at_start() -> None:
        marks["cpu0"] = procs.cpu_seconds(run.proc.pid)
        marks["busy0"] = procs.machine_busy_seconds()
        marks["sink0"] = read_stats(sink.endpoint, STATS_TIMEOUT)

    def sample() -> None:
        rss = procs.rss_bytes(run.proc.pid)
        if run.spec.system == "otelcol" and run.probe:  # cheap there, and its counters move in 1 s ticks
            samples.append((rss, run.probe(scrape()).buffered_traces))
        rss_samples.append(rss)

    def at_end() -> None:
        marks["cpu1"] = procs.cpu_seconds(run.proc.pid)
        marks["busy1"] = procs.machine_busy_seconds()
        marks["rss"] = procs.rss_bytes(run.proc.pid)
        rss_samples.append(marks["rss"])
        marks["sink1"] = read_stats(sink.endpoint, STATS_TIMEOUT)
        marks["load1"] = Path("/proc/loadavg").read_text().split()[0]

    try:
        start = clients.launch()
        ws = start + s.warmup
        we = ws + s.duration
        # recohop's /metrics render (~1,000 derived series) runs in the hop under the GIL: it is read just
        # before the window opens and just after it closes, never inside it (the CPU edges are exact).
        events: list[tuple[float, Callable[[], None]]] = [
            (ws - min(0.5, s.warmup / 2), lambda: read_target("0")), (ws, at_start),
            (ws + s.duration / 2, sample), (ws + s.duration * 3 / 4, sample), (we, at_end),
            (we + 0.01, lambda: read_target("1"))]
        for when, action in sorted(events, key=lambda e: e[0]):
            time.sleep(max(0.0, when - time.monotonic()))
            action()
        result = clients.collect()
    except BaseException:
        clients.close()
        raise
    if marks.get("probe1") is not None:
        samples.append((marks["rss"], marks["probe1"].buffered_traces))
    wall = s.duration
    cpu = marks["cpu1"] - marks["cpu0"]
    spans = result.acked_spans
    spans_per_trace = workload.total_spans / max(1, workload.traces)
    row: dict[str, Any] = {
        "name": run.spec.name, "system": run.spec.system, "pipeline": "full" if run.spec.full else "passthrough",
        "table": run.spec.table,
        "spans_per_s": spans / wall,
        "acked_spans": spans,
        "errors": result.errors,
        "target_cores": cpu / wall,
        "cpu_s_per_million_spans": cpu / spans * 1e6 if spans else None,
        "spans_per_cpu_s": spans / cpu if cpu > 0 else None,
        "clients_cores": result.cpu_seconds / wall,
        "machine_cores": (marks["busy1"] - marks["busy0"]) / wall,
        "loadavg_at_end": marks["load1"],
        "rss_bytes": marks["rss"],
        "rss_max_bytes": max(rss_samples),
        "idle_rss_bytes": run.idle_rss,
        "latency_ms": {"p50": _ms(_percentile(result.latencies, 50)), "p99": _ms(_percentile(result.latencies, 99))},
        "sink_mb_per_s": (marks["sink1"]["bytes"] - marks["sink0"]["bytes"]) / wall / 1e6,
    }
    row["other_cores"] = max(0.0, row["machine_cores"] - row["target_cores"] - row["clients_cores"])
    if marks.get("stages1"):
        # recohop: seconds per second inside each stage (recohop_stage_seconds_total), i.e. cores per stage.
        span = marks["t1"] - marks["t0"]  # the reads bracket the window (just before and just after)
        row["stage_cores"] = {k: (v - marks["stages0"].get(k, 0.0)) / span for k, v in marks["stages1"].items()}
    if run.spec.budget is not None:
        row["budget"] = {"traces": run.spec.budget.traces, "max_bytes": run.spec.budget.max_bytes,
                         "block_on_overflow": run.spec.budget.block, "why": run.spec.budget.why}
    if run.probe and marks.get("probe0") is not None:
        d = marks["probe1"].minus(marks["probe0"])
        handled = d.decided + (d.forced if run.spec.system == "otelcol" else 0.0)
        # Only where the buffer holds enough to dominate the RSS growth (not a few traces under back-pressure).
        per_span = [(rss - run.idle_rss) / (buf * spans_per_trace) for rss, buf in samples
                    if buf * spans_per_trace >= MIN_BUFFERED_SPANS]
        row["sampler"] = {
            "buffered_traces_end": marks["probe1"].buffered_traces,
            "buffered_spans_end": marks["probe1"].buffered_traces * spans_per_trace,
            "rss_per_buffered_span": statistics.median(per_span) if per_span else None,
            "rss_per_buffered_span_samples": per_span,
            "decided": d.decided,
            # recohop: decided early because the budget was reached; otelcol: evicted undecided (lost).
            "forced": d.forced,
            "forced_share": d.forced / handled if handled else None,
            # None when decision_wait is not a bucket edge of the sampler's histogram.
            "on_time_share": d.on_time / d.age_count if d.age_count and not math.isnan(d.on_time) else None,
            # otelcol: whole seconds, truncated, and evictions included.
            "mean_decision_age_s": d.age_sum / d.age_count if d.age_count else None,
            # Decisions (and evictions) per trace acknowledged in the window: ~1 at steady state. Far below
            # means traces were answered without being buffered (e.g. from a decision cache).
            "handled_per_trace": handled / (spans / spans_per_trace) * wall / (marks["t1"] - marks["t0"])
            if spans else None,
        }
    return row


def received_spans(run: Running) -> float | None:
    """Spans the target's receiver accepted, from its own metrics."""
    if not run.proc.metrics_url:
        return None
    text = _scrape(run.proc)
    if run.spec.system == "recohop":
        return procs.metric_sum(text, "recohop_received_items_total", "signal").get("spans", 0.0)
    return sum(sum(procs.metric_sum(text, n).values())
               for n in ("otelcol_receiver_accepted_spans", "otelcol_receiver_accepted_spans_total"))


def kept_specials(run: Running, sink: procs.Proc, before: dict[str, Any], workload: Workload,
                  s: PeerSettings) -> dict[str, Any]:
    """After the row's load: wait until everything buffered is decided and sent, then the special traces the
    capture sink got from this row against those in the spans the target accepted (the workload's share of
    special traces per span: the replay cycles through all its requests)."""
    time.sleep(s.root_grace + 2.5)
    received = received_spans(run) or 0.0
    after = read_stats(sink.endpoint, STATS_TIMEOUT)
    kept = {k: after.get("kept_special", {}).get(k, 0) - before.get("kept_special", {}).get(k, 0)
            for k in SPECIAL_KINDS}
    offered = received * workload.special_traces / workload.total_spans
    return {"received_spans": received, "kept_traces": after["kept_traces"] - before["kept_traces"],
            "kept_special": kept, "offered_special_est": offered,
            "special_kept_share_est": sum(kept.values()) / offered if offered else None}


def busy_cores(seconds: float = 2.0) -> float:
    """Busy cores of the whole machine over `seconds` (between rows nothing of the benchmark's runs but an
    idle sink, so this is other people's work)."""
    b0 = procs.machine_busy_seconds()
    time.sleep(seconds)
    return (procs.machine_busy_seconds() - b0) / seconds


def wait_quiet(s: PeerSettings, log: Callable[[str], None]) -> float:
    """Wait until the machine is idle, within what is left of `s.quiet_wait`; returns the last busy reading."""
    busy = busy_cores()
    while busy > s.quiet_cores and s.waited < s.quiet_wait:
        log(f"  machine busy ({busy:.2f} cores of other work): waiting ({s.waited:.0f}/{s.quiet_wait:.0f} s used)")
        time.sleep(10.0)
        s.waited += 12.0
        busy = busy_cores()
    return busy


def run_row(spec: RowSpec, sink: procs.Proc, workload_file: Path, workload: Workload, s: PeerSettings, key: str,
            notes: list[str], log: Callable[[str], None], capture: bool = False) -> dict[str, Any]:
    busy_before = wait_quiet(s, log)
    log(f"peer row {spec.name}" + (f" (budget {spec.budget.traces} traces{', block' if spec.budget.block else ''})"
                                   if spec.budget else ""))
    try:
        run = start_row(spec, sink, s, key)
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        reason = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), str(exc))[:300]
        notes.append(f"{spec.name}: did not start ({reason})")
        return {"name": spec.name, "system": spec.system, "table": spec.table, "skipped": reason}
    try:
        before = read_stats(sink.endpoint, STATS_TIMEOUT) if capture else {}
        windows = [measure(run, sink, workload_file, workload, s) for _ in range(max(1, s.repeat))]
        windows.sort(key=lambda r: r["spans_per_s"])
        row = windows[len(windows) // 2]
        if len(windows) > 1:
            row["repeats_spans_per_s"] = [w["spans_per_s"] for w in windows]
        if capture:
            row["capture"] = kept_specials(run, sink, before, workload, s)
        row["other_cores_before"] = busy_before
        if not run.proc.alive():
            row["note"] = f"target exited during the row: {run.proc.log_tail(5)}"
        handled = row.get("sampler", {}).get("handled_per_trace")
        if handled is not None and handled < 0.5:
            notes.append(f"{spec.name}: only {handled:.2f} decisions per trace received: not every trace was "
                         "buffered and decided")
        return row
    except (OSError, RuntimeError, queue.Empty, grpc.RpcError) as exc:
        reason = f"row failed: {type(exc).__name__}: {exc}; log: {run.proc.log_tail(3)}"[:400]
        notes.append(f"{spec.name}: {reason}")
        return {"name": spec.name, "system": spec.system, "table": spec.table, "skipped": reason}
    finally:
        code = run.proc.stop(30)
        if code not in (0, None):
            notes.append(f"{spec.name}: exited with {code}")


# ---------------------------------------------------------------- budgets

def fit_budget(rate_spans: float, workload: Workload, s: PeerSettings) -> Budget:
    """Room for decision_wait of traffic at `rate_spans` (x headroom): nothing is decided early."""
    spans_per_trace = workload.total_spans / max(1, workload.traces)
    traces = math.ceil(rate_spans / spans_per_trace * s.decision_wait * s.headroom)
    bytes_per_span = workload.total_bytes / workload.total_spans
    max_bytes = max(256 << 20, math.ceil(traces * spans_per_trace * bytes_per_span * 2))
    return Budget(traces, max_bytes, why=f"fits {s.decision_wait}s x {s.headroom:g} at {rate_spans:,.0f} spans/s")


def binding_budget(full_spans_per_s: float, workload: Workload, s: PeerSettings, fit: Budget,
                   block: bool = False) -> Budget:
    """`binding_fraction` of the traces that arrive over the root grace at this row's own full-pipeline rate:
    both samplers would need about root_grace (+ a tick) of traffic buffered to decide everything on time."""
    spans_per_trace = workload.total_spans / max(1, workload.traces)
    need = full_spans_per_s / spans_per_trace * s.root_grace
    traces = max(100, int(need * s.binding_fraction))
    return Budget(traces, fit.max_bytes, block=block,
                  why=f"{s.binding_fraction:g} x {need:,.0f} traces (root_grace at {full_spans_per_s:,.0f} spans/s)")


# ---------------------------------------------------------------- agreement

def _send_once(endpoint: str, requests: list[bytes], threads: int = 4) -> dict[str, int]:
    """Every request exactly once (retried on push-back), a few in flight."""
    channel = grpc.insecure_channel(endpoint, [("grpc.max_send_message_length", -1)])
    grpc.channel_ready_future(channel).result(timeout=15)
    call = channel.unary_unary(METHOD_PATHS["traces"])
    todo: queue.Queue[bytes] = queue.Queue()
    for raw in requests:
        todo.put(raw)
    counts = {"sent": 0, "retries": 0}
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                raw = todo.get_nowait()
            except queue.Empty:
                return
            for attempt in range(200):
                try:
                    call(raw, timeout=30)
                    break
                except grpc.RpcError as err:
                    if err.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):  # type: ignore[attr-defined]
                        raise
                    with lock:
                        counts["retries"] += 1
                    time.sleep(min(1.0, 0.02 * (attempt + 1)))
            with lock:
                counts["sent"] += 1

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    channel.close()
    return counts


def agreement_workload(s: PeerSettings, spans_per_request: int) -> tuple[Workload, Path, Path, dict[bytes, int]]:
    """A bounded workload with fixed ids (sent once), its file, its ground-truth file for the capture sink, and
    every trace id with its randomness (the low 56 bits)."""
    work = s.workdir / "agreement"
    work.mkdir(parents=True, exist_ok=True)
    wl = generate(s.agreement_requests, spans_per_request, s.agreement_seed, tracestate=AGREEMENT_TRACESTATE)
    path = work / "workload.bin"
    write_workload(path, wl.requests)
    truth = work / "ground_truth.json"
    truth.write_text(json.dumps({"specials": {tid[4:12].hex(): kind for tid, kind in wl.special_ids.items()}}))
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    ids: dict[bytes, int] = {}
    for raw in wl.requests:
        for rs in ExportTraceServiceRequest.FromString(raw).resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    ids[span.trace_id] = int.from_bytes(span.trace_id[9:16], "big")
    return wl, path, truth, ids


def run_agreement(s: PeerSettings, budgets: dict[str, Budget], key: str, spans_per_request: int,
                  notes: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    wl, _, truth, ids = agreement_workload(s, spans_per_request)
    threshold = rejection_threshold(BASELINE_PERCENT)
    special = wl.special_ids
    consistent = {t for t, r in ids.items() if t not in special and r >= threshold}
    runs: list[tuple[str, RowSpec]] = []
    if "recohop" in s.systems:
        runs.append(("recohop", RowSpec("agree_recohop", "recohop", True, budgets["recohop"], "agreement")))
    if "otelcol" in s.systems:
        runs.append(("otelcol", RowSpec("agree_otelcol", "otelcol", True, budgets["otelcol"], "agreement")))
        runs.append(("otelcol_usetracestate", RowSpec("agree_otelcol_usetracestate", "otelcol", True,
                                                      budgets["otelcol"], "agreement", [USE_TRACESTATE_GATE])))
    kept: dict[str, set[bytes]] = {}
    out: dict[str, Any] = {"traces": len(ids), "special": {k: sum(1 for v in special.values() if v == k)
                                                          for k in SPECIAL_KINDS},
                           "baseline_percent": BASELINE_PERCENT, "consistent_expected": len(consistent),
                           "tracestate": AGREEMENT_TRACESTATE, "runs": {}}
    for label, spec in runs:
        log(f"agreement: {label}")
        sink = procs.start_sink(s.workdir / f"sink_{spec.name}", capture=truth)
        try:
            run = start_row(spec, sink, s, key)
        except (RuntimeError, TimeoutError) as exc:
            sink.stop()
            notes.append(f"{spec.name}: did not start ({str(exc)[-200:]})")
            continue
        try:
            sent = _send_once(run.proc.endpoint, wl.requests)
            last = time.monotonic()
            # Rootless traces wait decision_wait; the rest root_grace. Then until the sink is quiet.
            time.sleep(s.decision_wait + 2.0)
            before = -1
            while True:
                now = read_stats(sink.endpoint, STATS_TIMEOUT)["kept_traces"]
                if now == before or time.monotonic() - last > s.decision_wait + 30:
                    break
                before = now
                time.sleep(1.0)
            kept[label] = read_kept(sink.endpoint)
        finally:
            run.proc.stop(30)
            sink.stop()
        got = kept[label]
        base = {t for t in got if t not in special}
        out["runs"][label] = {
            "sent": sent,
            "kept_traces": len(got),
            "kept_special": {k: sum(1 for t in got if special.get(t) == k) for k in SPECIAL_KINDS},
            "missed_special": sum(1 for t in special if t not in got),
            "baseline_kept": len(base),
            "baseline_equal_consistent_rule": base == consistent,
            "baseline_in_consistent_rule": len(base & consistent),
            "unknown_ids": len(got - ids.keys()),
        }
    labels = list(kept)
    overlaps: dict[str, Any] = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            ba = {t for t in kept[a] if t not in special}
            bb = {t for t in kept[b] if t not in special}
            overlaps[f"{a}~{b}"] = {"both": len(ba & bb), "only_" + a: len(ba - bb), "only_" + b: len(bb - ba)}
    out["baseline_overlap"] = overlaps
    return out


# ---------------------------------------------------------------- the run

def run_peer(workload: Workload, workload_file: Path, s: PeerSettings,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    key = secrets.token_hex(32)  # 64 bytes: recohop needs >= 16, otelcol's hmac-sha256 >= 32
    if "otelcol" in s.systems and procs.otelcol_binary() is None:
        notes.append("otelcol: the collector is not built (`make otelcol`); its rows are skipped")
        s.systems = tuple(x for x in s.systems if x != "otelcol")
    sink = procs.start_sink(s.workdir / "sink")
    try:
        passthrough: dict[str, float] = {}
        for system in s.systems:
            row = run_row(RowSpec(f"{system}_passthrough", system, False), sink, workload_file, workload, s, key,
                          notes, log)
            rows.append(row)
            if row.get("spans_per_s"):
                passthrough[system] = row["spans_per_s"]
        fit = {system: fit_budget(passthrough.get(system, FALLBACK_RATE), workload, s) for system in s.systems}
        full: dict[str, float] = {}
        for system in s.systems:
            row = run_row(RowSpec(f"{system}_full", system, True, fit[system]), sink, workload_file, workload, s,
                          key, notes, log)
            rows.append(row)
            if row.get("spans_per_s"):
                full[system] = row["spans_per_s"]
        if s.stages and "otelcol" in s.systems:
            for variant in OTELCOL_STAGES:
                rows.append(run_row(RowSpec(f"otelcol_stage_{variant}", "otelcol", True, fit["otelcol"], "stages",
                                            variant=variant), sink, workload_file, workload, s, key, notes, log))
    finally:
        sink.stop()
    if s.binding and full:
        # A capture sink per row (the replay's fresh ids repeat from row to row, and the sink counts distinct
        # traces): which special traces were kept under the binding budget.
        truth = s.workdir / "ground_truth.json"
        truth.write_text(json.dumps({"specials": {t[4:12].hex(): k for t, k in workload.special_ids.items()}}))
        for system in s.systems:
            if system not in full:
                continue
            for block in ([False, True] if system == "otelcol" else [False]):
                budget = binding_budget(full[system], workload, s, fit[system], block)
                name = f"{system}_full_binding" + ("_block" if block else "")
                sink = procs.start_sink(s.workdir / f"sink_{name}", capture=truth)
                try:
                    rows.append(run_row(RowSpec(name, system, True, budget, "binding"), sink, workload_file,
                                        workload, s, key, notes, log, capture=True))
                finally:
                    sink.stop()
    agreement = None
    if s.agreement:
        spans_per_request = round(workload.total_spans / len(workload.requests))
        agreement = run_agreement(s, fit, key, spans_per_request, notes, log)
    return {"rows": rows, "budgets": {k: vars(v) for k, v in fit.items()}, "targets": targets(rows),
            "agreement": agreement, "quiet_waited_s": s.waited, "notes": notes}


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 22's targets from the main table."""
    by = {r["name"]: r for r in rows if not r.get("skipped")}

    def get(name: str, key: str) -> float | None:
        return by.get(name, {}).get(key)

    out: dict[str, Any] = {}
    rc, oc = get("recohop_full", "spans_per_cpu_s"), get("otelcol_full", "spans_per_cpu_s")
    if rc and oc:
        out["full_spans_per_cpu_s_ratio"] = {"value": rc / oc, "target": 2.0, "met": rc / oc >= 2.0}
    rs = by.get("recohop_full", {}).get("sampler", {}).get("rss_per_buffered_span")
    os_ = by.get("otelcol_full", {}).get("sampler", {}).get("rss_per_buffered_span")
    if rs is not None and os_ is not None:
        out["rss_per_buffered_span"] = {"recohop": rs, "otelcol": os_, "met": rs <= os_}
    rf, rp = get("recohop_full", "spans_per_s"), get("recohop_passthrough", "spans_per_s")
    if rf and rp:
        out["recohop_full_over_passthrough"] = {"value": rf / rp, "target": 0.75, "met": rf / rp >= 0.75}
    of, op = get("otelcol_full", "spans_per_s"), get("otelcol_passthrough", "spans_per_s")
    if of and op:
        out["otelcol_full_over_passthrough"] = {"value": of / op}
    if rf and of:
        out["full_spans_per_s_ratio"] = {"value": rf / of}
    return out


def otelcol_version() -> str | None:
    binary = procs.otelcol_binary()
    if binary is None:
        return None
    return subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()


def peer_machine() -> dict[str, Any]:
    return {**machine(), "otelcol": otelcol_version()}


# ---------------------------------------------------------------- tables

def _f(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _grid(head: tuple[str, ...], lines: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths, strict=False)))
           for row in (head, *lines)]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def table(result: dict[str, Any]) -> str:
    head = ("row", "spans/s", "cores", "other cores", "CPU-s/M spans", "spans/CPU-s", "RSS MiB", "idle MiB", "B/buffered span",
            "p50 ms", "p99 ms", "buffered traces", "decision age s", "on time", "forced", "budget traces")
    out: list[str] = []
    for table_name, title in (("main", "budgets fit decision_wait"), ("stages", "the collector's components alone"),
                              ("binding", "budget binding")):
        rows = [r for r in result["rows"] if r.get("table") == table_name]
        if not rows:
            continue
        lines = []
        for r in rows:
            if r.get("skipped"):
                lines.append((r["name"], "skipped", *[""] * 13, r["skipped"][:50]))
                continue
            smp = r.get("sampler", {})
            lat = r["latency_ms"]
            lines.append((
                r["name"], _f(r["spans_per_s"]), _f(r["target_cores"], ".2f"), _f(r["other_cores"], ".2f"),
                _f(r["cpu_s_per_million_spans"], ".2f"),
                _f(r["spans_per_cpu_s"]), _f(r["rss_bytes"] / 2**20), _f(r["idle_rss_bytes"] / 2**20),
                _f(smp.get("rss_per_buffered_span")), _f(lat["p50"], ".1f"), _f(lat["p99"], ".1f"),
                _f(smp.get("buffered_traces_end")), _f(smp.get("mean_decision_age_s"), ".2f"),
                _f(smp.get("on_time_share") * 100, ".1f") + "%" if smp.get("on_time_share") is not None else "-",
                _f(smp.get("forced_share") * 100, ".1f") + "%" if smp.get("forced_share") is not None else "-",
                _f(r.get("budget", {}).get("traces")),
            ))
        out.append(f"{title}:")
        out.extend(_grid(head, lines))
        for r in rows:
            if r.get("stage_cores"):
                out.append(f"  {r['name']} cores per stage: "
                           + ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["stage_cores"].items(), key=lambda kv: -kv[1])))
        if table_name == "binding":
            for r in rows:
                cap = r.get("capture")
                if cap:
                    out.append(f"  {r['name']}: special traces kept {sum(cap['kept_special'].values()):,} of "
                               f"~{cap['offered_special_est']:,.0f} received over the row "
                               f"({_f((cap['special_kept_share_est'] or 0) * 100, '.1f')}%): {cap['kept_special']}")
        out.append("")
    ag = result.get("agreement")
    if ag:
        out.append(f"agreement ({ag['traces']:,} traces sent once, fixed ids, tracestate {ag['tracestate']}; "
                   f"special {ag['special']}; consistent 1 % rule expects {ag['consistent_expected']}):")
        for label, r in ag["runs"].items():
            out.append(f"  {label:<24} kept special {r['kept_special']} missed {r['missed_special']}; baseline "
                       f"{r['baseline_kept']} (of them {r['baseline_in_consistent_rule']} by the consistent rule; "
                       f"equal: {r['baseline_equal_consistent_rule']})")
        for pair, o in ag["baseline_overlap"].items():
            out.append(f"  baseline overlap {pair}: {o}")
        out.append("")
    out.append("targets:")
    for k, v in result.get("targets", {}).items():
        out.append(f"  {k}: {json.dumps(v)}")
    if result.get("notes"):
        out.append("notes:")
        out.extend(f"  - {n}" for n in result["notes"])
    return "\n".join(out)
