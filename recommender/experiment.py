"""A/B assignment by hashing the user id, carried as W3C baggage across service boundaries (seed 003).

The frontend assigns and injects; the recommendation service extracts, copies the variant onto its spans
and picks the model version from it. Both sides use the same explicit propagator, independent of
OTEL_PROPAGATORS, so the wire format is always `traceparent` + `baggage`.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping

from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

EXPERIMENT = "reco_model_v2"
BAGGAGE_KEY = "experiment.variant"
VARIANTS = ("A", "B")

PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def assign_variant(user_id: str, experiment: str = EXPERIMENT, share_b: float = 0.5) -> str:
    """Stable per (user, experiment): the first 8 bytes of sha256 mapped to [0, 1)."""
    digest = hashlib.sha256(f"{user_id}:{experiment}".encode()).digest()
    return "B" if int.from_bytes(digest[:8], "big") / 2**64 < share_b else "A"


def inject(user_id: str, carrier: MutableMapping[str, str], context: Context | None = None) -> str:
    """Frontend side: assign the variant, put it in baggage and write the headers into `carrier`."""
    variant = assign_variant(user_id)
    PROPAGATOR.inject(carrier, context=baggage.set_baggage(BAGGAGE_KEY, variant, context))
    return variant


def extract(carrier: MutableMapping[str, str]) -> Context:
    """Service side: the incoming trace context and baggage."""
    return PROPAGATOR.extract(carrier)


def variant_of(context: Context) -> str | None:
    value = baggage.get_baggage(BAGGAGE_KEY, context)
    return value if value in VARIANTS else None
