"""`ReadAhead` (processor/native/readahead.py): what a walk found ahead of a stage's lock is used once, only for
the very bytes object it walked, only on the thread that walked it; a walk that raised is forgotten."""

from __future__ import annotations

import threading

import pytest

from processor.native.readahead import MISSING, ReadAhead


def test_used_once_for_the_same_object_only() -> None:
    ahead = ReadAhead()
    raw = bytes(bytearray(b"request"))
    assert ahead.take(raw) is MISSING
    ahead.keep(raw, len)
    assert ahead.take(raw) == 7
    assert ahead.take(raw) is MISSING  # used up
    ahead.keep(raw, lambda data: None)
    assert ahead.take(raw) is None  # a walk may find None (e.g. a scanner that gave up): kept as found
    ahead.keep(raw, len)
    assert ahead.take(bytes(bytearray(raw))) is MISSING  # equal bytes, another object
    assert ahead.take(raw) is MISSING  # and the walk of the first object is gone too


def test_a_walk_that_raised_is_forgotten_and_threads_keep_their_own() -> None:
    ahead = ReadAhead()
    raw = b"x" * 8

    def fails(data: bytes) -> int:
        raise ValueError("unreadable")

    ahead.keep(raw, len)
    ahead.keep(raw, fails)
    assert ahead.take(raw) is MISSING
    ahead.keep(raw, len)
    seen: list[object] = []
    other = threading.Thread(target=lambda: seen.append(ahead.take(raw)))
    other.start()
    other.join()
    assert seen == [MISSING] and ahead.take(raw) == 8
    with pytest.raises(KeyboardInterrupt):  # not an Exception: not swallowed
        ahead.keep(raw, lambda data: (_ for _ in ()).throw(KeyboardInterrupt))
