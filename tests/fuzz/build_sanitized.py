"""Builds every native scanner (processor/native/_*.c) a second time, for fuzzing: clang with AddressSanitizer,
UndefinedBehaviorSanitizer (any finding aborts) and libFuzzer's coverage instrumentation, into a directory of its
own (the installed modules are not touched). fuzz_native.py loads these in place of the installed ones.

    python tests/fuzz/build_sanitized.py OUT_DIR     # needs clang (Debian: apt-get install clang)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "processor" / "native"
FLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-std=c11", "-fPIC", "-shared",
         "-fsanitize=address,undefined,fuzzer-no-link", "-fno-sanitize-recover=undefined",
         "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-Werror"]


def build(out: Path) -> list[Path]:
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("clang is needed for the sanitizer build (Debian: apt-get install clang)")
    out.mkdir(parents=True, exist_ok=True)
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = []
    for source in sorted(NATIVE.glob("_*.c")):
        target = out / f"{source.stem}{suffix}"
        headers = list(NATIVE.glob("*.h"))
        if target.exists() and all(target.stat().st_mtime > p.stat().st_mtime for p in [source, *headers]):
            built.append(target)
            continue
        subprocess.run([clang, *FLAGS, f"-I{include}", str(source), "-o", str(target)], check=True)
        built.append(target)
    return built


if __name__ == "__main__":
    for path in build(Path(sys.argv[1])):
        print(path)
