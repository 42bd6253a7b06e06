#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 10), one after the other;
# exits non-zero if any target crashes (a failed property, a panic, a timeout or an
# out-of-memory). See docs/FUZZING.md.
#
#   fuzz/run.sh [SECONDS]
#
# Environment:
#   CARGO_TARGET_DIR   where to build (default: fuzz/target, outside the main build's)
#   FUZZ_WORK          working corpora, grown by the runs (default: $CARGO_TARGET_DIR/corpus);
#                      the committed seeds in fuzz/corpus/<target> are only read
#   FUZZ_TARGETS       a space-separated subset of targets (default: all)
#   WASMGATE_FUZZ_STRICT=1  known findings fail too (see docs/FUZZING.md)
set -euo pipefail

seconds=${1:-10}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
work=${FUZZ_WORK:-$CARGO_TARGET_DIR/corpus}

cargo fuzz build --sanitizer none

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
failed=()
for target in $targets; do
    mkdir -p "$work/$target"
    echo "== $target (${seconds}s)"
    log="$work/$target.log"
    if ! cargo fuzz run --sanitizer none "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        failed+=("$target")
        grep -E -A8 "panicked at|==[0-9]+== ERROR" "$log" | head -40 || true
    fi
    grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec)" "$log" || true
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "no crash in: $targets"
