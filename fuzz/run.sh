#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 10), or for FUZZ_RUNS
# executions, one after the other; exits non-zero if any target crashes (a failed property,
# a panic, a timeout or an out-of-memory). See docs/FUZZING.md.
#
#   fuzz/run.sh [SECONDS]
#   FUZZ_RUNS=10000000 fuzz/run.sh       # each target for 10 million executions
#
# Environment:
#   CARGO_TARGET_DIR   where to build (default: fuzz/target, outside the main build's)
#   FUZZ_WORK          working corpora, grown by the runs (default: $CARGO_TARGET_DIR/corpus);
#                      the committed seeds in fuzz/corpus/<target> are only read
#   FUZZ_TARGETS       a space-separated subset of targets, run in that order (default: all)
#   FUZZ_RUNS          bound each run by executions (libFuzzer -runs=) instead of seconds
#   WASMGATE_FUZZ_STRICT=1  known findings fail too (see docs/FUZZING.md)
set -euo pipefail

seconds=${1:-10}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
work=${FUZZ_WORK:-$CARGO_TARGET_DIR/corpus}
if [ -n "${FUZZ_RUNS:-}" ]; then
    bound=(-runs="$FUZZ_RUNS")
    label="$FUZZ_RUNS runs"
else
    bound=(-max_total_time="$seconds")
    label="${seconds}s"
fi

cargo fuzz build --sanitizer none

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
failed=()
for target in $targets; do
    mkdir -p "$work/$target"
    echo "== $target ($label) $(date -u +%FT%TZ)"
    log="$work/$target.log"
    start=$(date +%s)
    # The committed seeds, when the target has any.
    seeds=()
    [ -d "corpus/$target" ] && seeds=("corpus/$target")
    if ! cargo fuzz run --sanitizer none "$target" "$work/$target" "${seeds[@]}" -- \
        "${bound[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        failed+=("$target")
        grep -E -A8 "panicked at|==[0-9]+== ERROR" "$log" | head -40 || true
    fi
    grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec)" "$log" || true
    # The last status line: coverage (cov), features (ft), corpus (corp) when it stopped.
    grep -E "^#[0-9]+" "$log" | tail -1 || true
    echo "wall: $(($(date +%s) - start))s, working corpus: $(find "$work/$target" -type f | wc -l) files"
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "no crash in: $targets"
