"""Native (C) scanners for the span hot path, with the pure-Python code as the fallback and the reference.

Why: per-span Python work is what limits the hop (~1 us to read a span's few fields through protobuf).
Each `_<name>.c` here walks serialized OTLP once and hands Python per-trace or per-batch results. They are
built by `pip install -e .` (setup.py compiles every `processor/native/_*.c`). A scanner that meets bytes
it does not understand returns None and the caller takes the pure-Python path, which gives the same result
(tests compare both on random input). Set RECOHOP_NATIVE=0 to force the Python paths;
RECOHOP_REQUIRE_NATIVE=1 makes a missing build an error (CI sets it so a broken build cannot pass quietly).
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("recohop.native")
_warned: set[str] = set()


class NativeMissing(ImportError):
    pass


def load(name: str) -> ModuleType | None:
    """The compiled module `processor.native._<name>`, or None when disabled or not built."""
    if os.environ.get("RECOHOP_NATIVE", "1") == "0":
        return None
    try:
        return importlib.import_module(f"processor.native._{name}")
    except ImportError as exc:
        if os.environ.get("RECOHOP_REQUIRE_NATIVE") == "1":
            raise NativeMissing(f"native module _{name} is not built ({exc}); run `pip install -e .`") from exc
        if name not in _warned:  # loudly, once per scanner: the hop works, but several times slower
            _warned.add(name)
            log.warning("NATIVE SCANNER _%s IS NOT BUILT: this stage runs its pure-Python path, several times "
                        "slower. Install a C compiler and the Python headers (Debian: apt-get install gcc "
                        "python3-dev) and reinstall recohop.", name)
        return None
