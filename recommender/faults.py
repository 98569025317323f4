"""Fault injection settings, parsed from `--faults key=value,...` (unknown keys and bad values are errors)."""

from __future__ import annotations

from dataclasses import dataclass, fields

PLACEMENTS = ("home", "product_page", "cart", "email")


@dataclass(frozen=True)
class Faults:
    error: float = 0.0  # share of requests failing in one stage (exception event, status ERROR)
    slow: float = 0.0  # share of embedding fetches that stall 550-1500 ms (reco.generate > 500 ms)
    cache_miss: float = 0.1  # share of embedding fetches missing the cache (slower, reco.cache_hit=false)
    timeout: float = 0.0  # share of model-store timeouts → popularity fallback (reco.fallback=true)
    drift: str = ""  # placement whose ranking silently goes stale: CTR falls, latency unchanged
    drift_start: float = 0.5  # when drift begins, as a fraction of the run
    drift_severity: float = 1.0  # share of drifted-placement requests served from stale embeddings

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise ValueError(f"--faults {f.name}={value}: expected a share between 0 and 1")
        if self.drift and self.drift not in PLACEMENTS:
            raise ValueError(f"--faults drift={self.drift}: expected one of {', '.join(PLACEMENTS)}")

    @classmethod
    def parse(cls, text: str) -> Faults:
        """`error=0.02,slow=0.03,cache_miss=0.3,timeout=0.02,drift=email,drift_start=0.5` (all optional)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ValueError(f"--faults {part!r}: expected key=value with key in {', '.join(known)}")
            if known[key].type in ("str", str):
                values[key] = raw.strip()
            else:
                try:
                    values[key] = float(raw)
                except ValueError:
                    raise ValueError(f"--faults {key}={raw!r}: expected a number") from None
        return cls(**values)  # type: ignore[arg-type]
