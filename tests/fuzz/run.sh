#!/usr/bin/env bash
# Fuzz every native scanner entry point for a bounded time (what `make fuzz` and CI run).
#   bash tests/fuzz/run.sh [SECONDS_PER_TARGET]       (default 25; two targets at a time on 2 cores)
# Installs what it needs when missing (clang from Debian, atheris from PyPI), builds the scanners with
# ASan + UBSan + coverage into build/fuzz/, seeds each target's corpus from the workloads and the regression
# inputs, runs each target against its reference path, and fails on the first finding (its input is copied to
# build/fuzz/findings/<target>/; add it to tests/fuzz/regressions/<target>/ once understood).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET="${1:-25}"
PYTHON="${PYTHON:-python3}"
OUT=build/fuzz
TARGETS="limits redact spanscan tracestore"

if ! command -v clang >/dev/null 2>&1; then
  echo "fuzz: installing clang (Debian)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null; fi
fi
"$PYTHON" -c "import atheris" 2>/dev/null || "$PYTHON" -m pip install -q atheris
SITE=$("$PYTHON" -c "import atheris, pathlib; print(pathlib.Path(atheris.__file__).resolve().parent.parent)")
RUNTIME="$SITE/asan_with_fuzzer.so"  # ASan (with UBSan's handlers) and libFuzzer, as atheris ships them

"$PYTHON" tests/fuzz/build_sanitized.py "$OUT/modules" >/dev/null
mkdir -p "$OUT/corpus" "$OUT/findings"
"$PYTHON" tests/fuzz/seeds.py "$OUT/corpus" $TARGETS >/dev/null
for target in $TARGETS; do
  if [ -d "tests/fuzz/regressions/$target" ]; then cp tests/fuzz/regressions/"$target"/* "$OUT/corpus/$target/"; fi
done

run_one() {
  local target=$1 log="$OUT/$1.log"
  mkdir -p "$OUT/findings/$target"
  if LD_PRELOAD="$RUNTIME" PYTHONMALLOC=malloc \
     ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=0" \
     UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" RECOHOP_FUZZ_SEQUENCES="$OUT/findings/sequences" \
     "$PYTHON" tests/fuzz/fuzz_native.py "$target" "$OUT/modules" "$OUT/corpus/$target" \
       -max_total_time="$SECONDS_PER_TARGET" -max_len=16384 -timeout=30 -rss_limit_mb=4096 \
       -artifact_prefix="$OUT/findings/$target/" -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz $target: $(grep -E '^(Done|stat::number_of_executed_units)' "$log" | tr '\n' ' ')"
  else
    echo "fuzz $target: FINDING (log $log, input in $OUT/findings/$target/)" >&2
    grep -E "ERROR: AddressSanitizer|runtime error|Uncaught Python exception|Error|assert" "$log" | head -20 >&2
    tail -40 "$log" >&2
    return 1
  fi
}

status=0
set -- $TARGETS
while [ $# -gt 0 ]; do
  run_one "$1" & first=$!
  second=""
  if [ $# -gt 1 ]; then run_one "$2" & second=$!; fi
  wait "$first" || status=1
  if [ -n "$second" ]; then wait "$second" || status=1; fi
  shift; [ $# -gt 0 ] && shift
done
exit "$status"
