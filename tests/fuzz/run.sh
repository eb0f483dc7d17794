#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz/ for a bounded time over a copy of its seed corpus (the committed
# corpus is never written to), with the wire dictionary; what `make fuzz` and .ci/run run.
#
#   tests/fuzz/run.sh BUILD_DIR SECONDS [libFuzzer flags...]   # SECONDS per target, e.g. build/fuzz 30
#
# Exits non-zero as soon as a target crashes, leaks, hangs (-timeout), runs out of memory (-rss_limit_mb) or
# trips ASan or UBSan: the input that did is kept as BUILD_DIR/fuzz-artifacts/<target>-<kind>-<sha1>, and the
# line to reproduce it is printed. New inputs the run found stay in BUILD_DIR/fuzz-corpus/<target> (replaced at
# every run); extra flags (e.g. -runs=N, -jobs=N) go to every target after the defaults.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 BUILD_DIR SECONDS [libFuzzer flags...]" >&2
  exit 2
fi
build="$1"
seconds="$2"
shift 2
here="$(cd "$(dirname "$0")" && pwd)"
targets=(rank_call infer_call)

# detect_leaks: LeakSanitizer at exit and libFuzzer's per-input leak check; UBSan already aborts on its first
# report (-fno-sanitize-recover=all), with a stack.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

mkdir -p "$build/fuzz-artifacts"
for target in "${targets[@]}"; do
  binary="$build/${target}_fuzz"
  if [[ ! -x "$binary" ]]; then
    echo "fuzz: $binary is not built (cmake -DADRANK_FUZZ=ON, clang)" >&2
    exit 1
  fi
  corpus="$build/fuzz-corpus/$target"
  rm -rf "$corpus"
  mkdir -p "$corpus"
  cp "$here/corpus/$target/"* "$corpus/"
  log="$build/fuzz-$target.log"
  echo "fuzz: $target for ${seconds} s over $(ls "$corpus" | wc -l) seeds (log: $log)"
  if ! "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
    -dict="$here/wire.dict" -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$target-" "$@" \
    "$corpus" > "$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target FAILED; reproduce with: $binary <the artifact named above>" >&2
    exit 1
  fi
  grep -E '^Done|stat::number_of_executed_units|stat::peak_rss_mb' "$log" || true
  grep -E '^#[0-9]+\s+(INITED|DONE)' "$log" || true
done
echo "fuzz: every target ran (${seconds} s at most) without a crash, leak or sanitizer report"
