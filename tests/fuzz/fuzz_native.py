"""One coverage-guided fuzzer (atheris, i.e. libFuzzer) over one native entry point, against its reference path.

    LD_PRELOAD=<atheris>/asan_with_fuzzer.so PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \\
        python tests/fuzz/fuzz_native.py TARGET SANITIZED_DIR CORPUS_DIR -max_total_time=30 [libFuzzer flags]

The scanners come from SANITIZED_DIR (build_sanitized.py: ASan + UBSan + coverage), loaded in place of the
installed ones before anything imports them; TARGET is a name in native_targets.TARGETS. A memory or UB fault
aborts with the sanitizer's report; a difference from the reference is an uncaught AssertionError; either way
libFuzzer writes the input (crash-*) for tests/fuzz/regressions/. `make fuzz` runs every target this way.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOURCES = Path(__file__).resolve().parents[2] / "processor" / "native"


def load_sanitized(directory: Path) -> list[str]:
    """Imports every sanitizer-built scanner under its real name (processor.native._<name>)."""
    import processor.native  # noqa: F401 - the package first, so its modules can be registered below

    names = []
    sources = {c.stem for c in SOURCES.glob("_*.c")}  # a stale build of a deleted scanner is not loaded
    for path in sorted(directory.glob("_*.so")):
        if path.name.split(".")[0] not in sources:
            continue
        name = f"processor.native.{path.name.split('.')[0]}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
        names.append(name)
    return names


def main() -> None:
    import atheris

    target, directory, *fuzzer_args = sys.argv[1:]
    loaded = load_sanitized(Path(directory))
    expected = sorted(f"processor.native.{c.stem}" for c in SOURCES.glob("_*.c"))
    if sorted(loaded) != expected:  # every scanner in the source tree, built with the sanitizers
        raise SystemExit(f"expected the sanitizer-built scanners {expected} in {directory}, found {loaded}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import native_targets

    check = native_targets.TARGETS[target]
    check(b"")  # build the stages (and fail early) before fuzzing starts
    atheris.Setup([sys.argv[0], *fuzzer_args], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
