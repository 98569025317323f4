"""Trace ids that collide under the trace-id hash the native scanners used before it was keyed.

Why: `tid_hash` in processor/native/otlp.h once was a fixed function of the id (splitmix64's finalizer over
`a ^ b * C ^ b >> 29`), so anyone could compute any number of ids that land in one bucket of the trace store,
the decision cache and the intake scanner: every lookup then walks a chain as long as the flood. The hash is
keyed now (a random key per process); these ids show that what collided before no longer does.
"""

from __future__ import annotations

import random

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def old_tid_hash(tid: bytes) -> int:
    """The unkeyed hash of processor/native/otlp.h before the keyed one (kept here as the attack's target)."""
    a = int.from_bytes(tid[:8], "little")
    b = int.from_bytes(tid[8:], "little")
    x = a ^ ((b * GOLDEN) & MASK) ^ (b >> 29)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    x ^= x >> 31
    return x


def colliding_ids(count: int, seed: int = 1) -> list[bytes]:
    """`count` distinct valid trace ids whose old hash is one and the same 64-bit value: for any second half b,
    the first half a = x ^ b * C ^ b >> 29 gives the same pre-finalizer value x, so the same full hash."""
    rng = random.Random(seed)
    x = rng.getrandbits(64) | 1
    ids: set[bytes] = set()
    while len(ids) < count:
        b = rng.getrandbits(64)
        a = x ^ ((b * GOLDEN) & MASK) ^ (b >> 29)
        ids.add(a.to_bytes(8, "little") + b.to_bytes(8, "little"))
    return sorted(ids, key=lambda _: rng.random())


def random_ids(count: int, seed: int = 2) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.getrandbits(128).to_bytes(16, "little") or b"\x01" * 16 for _ in range(count)]
