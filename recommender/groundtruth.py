"""What a simulation run really did, counted on the side while it ran: the reference that tests and
dashboard validation compare the hop's derived metrics and sampling decisions against."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recommender.behaviour import Feedback
from recommender.service import STAGES, RecoOutcome

SLOW_MS = 500.0


def position_bucket(position: int) -> str:
    """Same buckets as the hop's reco_impressions_total / reco_clicks_total."""
    return "1" if position == 1 else "2-3" if position <= 3 else "4-10" if position <= 10 else "11+"


def _slice() -> dict[str, float]:
    return {"requests": 0, "impressions": 0, "clicks": 0, "conversions": 0, "revenue": 0.0}


@dataclass
class GroundTruth:
    seed: int
    rps: float
    duration: float
    faults: dict
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    spans: int = 0
    errors: int = 0
    fallbacks: int = 0
    cold_starts: int = 0
    slow: int = 0
    cache_misses: int = 0
    per_placement: dict = field(default_factory=lambda: defaultdict(_slice))
    per_variant: dict = field(default_factory=lambda: defaultdict(_slice))
    per_position_bucket: dict = field(default_factory=lambda: defaultdict(lambda: {"impressions": 0, "clicks": 0}))
    drift_windows: dict = field(default_factory=lambda: defaultdict(_slice))
    trace_ids: dict = field(default_factory=lambda: {"error": [], "fallback": [], "cold_start": [], "slow": []})
    stage_ms: dict = field(default_factory=lambda: defaultdict(list))
    run: dict = field(default_factory=dict)  # wall-clock facts (throughput): not part of the seeded result

    def add_request(self, out: RecoOutcome, drift_window: str | None = None) -> None:
        self.requests += 1
        self.spans += len(out.stage_ms)
        n = len(out.items)
        self.impressions += n
        for s in (self.per_placement[out.placement], self.per_variant[out.variant]):
            s["requests"] += 1
            s["impressions"] += n
        self.per_variant[out.variant]["model_version"] = out.model_version
        for pos in range(1, n + 1):
            self.per_position_bucket[position_bucket(pos)]["impressions"] += 1
        if drift_window:
            self.drift_windows[drift_window]["requests"] += 1
            self.drift_windows[drift_window]["impressions"] += n
        for name, ms in out.stage_ms.items():
            self.stage_ms[name].append(ms)
        for flag, key in ((out.error, "error"), (out.fallback, "fallback"), (out.cold_start, "cold_start"),
                          (out.duration_ms > SLOW_MS, "slow")):
            if flag:
                self.trace_ids[key].append(out.trace_id)
        self.errors += out.error
        self.fallbacks += out.fallback
        self.cold_starts += out.cold_start
        self.slow += out.duration_ms > SLOW_MS
        self.cache_misses += out.cache_hit is False

    def add_click(self, out: RecoOutcome, fb: Feedback, drift_window: str | None = None) -> None:
        self.clicks += 1
        self.spans += 1
        for s in self._slices(out, drift_window):
            s["clicks"] += 1
        self.per_position_bucket[position_bucket(fb.position)]["clicks"] += 1

    def add_conversion(self, out: RecoOutcome, fb: Feedback, drift_window: str | None = None) -> None:
        self.conversions += 1
        self.spans += 1
        self.revenue += fb.revenue
        for s in self._slices(out, drift_window):
            s["conversions"] += 1
            s["revenue"] += fb.revenue

    def _slices(self, out: RecoOutcome, drift_window: str | None) -> list[dict]:
        slices = [self.per_placement[out.placement], self.per_variant[out.variant]]
        return slices + [self.drift_windows[drift_window]] if drift_window else slices

    @staticmethod
    def _finish(s: dict) -> dict:
        out = dict(s)
        out["ctr"] = s["clicks"] / s["impressions"] if s["impressions"] else 0.0
        out["revenue"] = round(s["revenue"], 2)
        return out

    def to_dict(self) -> dict:
        req = max(1, self.requests)
        return {
            "seed": self.seed, "rps": self.rps, "duration_s": self.duration, "faults": self.faults,
            "requests": self.requests, "impressions": self.impressions, "clicks": self.clicks,
            "ctr": self.clicks / self.impressions if self.impressions else 0.0,
            "conversions": self.conversions, "revenue": round(self.revenue, 2), "spans": self.spans,
            "cold_start_rate": self.cold_starts / req, "fallback_rate": self.fallbacks / req,
            "error_rate": self.errors / req,
            "counts": {"error": self.errors, "fallback": self.fallbacks, "cold_start": self.cold_starts,
                       "slow": self.slow, "cache_miss": self.cache_misses},
            "slow_threshold_ms": SLOW_MS,
            "per_placement": {k: self._finish(v) for k, v in sorted(self.per_placement.items())},
            "per_variant": {k: self._finish(v) for k, v in sorted(self.per_variant.items())},
            "per_position_bucket": {k: dict(v) for k, v in sorted(self.per_position_bucket.items())},
            "drift_windows": {k: self._finish(v) for k, v in sorted(self.drift_windows.items())},
            "p95_ms": {s: float(np.percentile(self.stage_ms[s], 95)) for s in STAGES if self.stage_ms.get(s)},
            "trace_ids": self.trace_ids,
            "run": self.run,
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def summary(self) -> str:
        """The human-readable digest `--dry-run` prints."""
        d = self.to_dict()
        lines = [f"requests {d['requests']}  impressions {d['impressions']}  clicks {d['clicks']}  "
                 f"ctr {d['ctr']:.2%}  conversions {d['conversions']}  revenue {d['revenue']:.2f}",
                 f"cold_start_rate {d['cold_start_rate']:.2%}  fallback_rate {d['fallback_rate']:.2%}  "
                 f"error_rate {d['error_rate']:.2%}  slow(>{SLOW_MS:.0f}ms) {d['counts']['slow']}"]
        for name, s in d["per_placement"].items():
            lines.append(f"  placement {name:<13} requests {s['requests']:>6}  impressions {s['impressions']:>7}  "
                         f"ctr {s['ctr']:.2%}  conversions {s['conversions']:>5}  revenue {s['revenue']:.2f}")
        for name, s in d["per_variant"].items():
            lines.append(f"  variant {name} ({s.get('model_version', '?')}) requests {s['requests']:>6}  "
                         f"ctr {s['ctr']:.2%}  revenue {s['revenue']:.2f}")
        for name, s in d["drift_windows"].items():
            lines.append(f"  drift window {name:<7} impressions {s['impressions']:>6}  ctr {s['ctr']:.2%}")
        lines.append("  p95 ms: " + "  ".join(f"{k} {v:.1f}" for k, v in d["p95_ms"].items()))
        if d["run"]:
            lines.append("  run: " + "  ".join(f"{k} {v}" for k, v in d["run"].items()))
        return "\n".join(lines)
