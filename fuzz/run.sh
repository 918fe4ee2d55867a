#!/usr/bin/env bash
# Builds and runs quench's fuzz targets for a bounded time each; not run in CI.
#
#   fuzz/run.sh                 # every target, 60 s each
#   FUZZ_SECONDS=300 fuzz/run.sh idx recipe
#
# Seeds (committed): fuzz/corpus/<target>/. New inputs libFuzzer finds go to a scratch corpus,
# $FUZZ_WORK/corpus/<target>/ (not committed), crashes to $FUZZ_WORK/artifacts/<target>/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
seconds="${FUZZ_SECONDS:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quench-fuzz-target}"
work="${FUZZ_WORK:-$here/work}"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(idx recipe checkpoint packed)

cd "$here"
# -a: debug assertions (integer overflow is a finding); AddressSanitizer is cargo-fuzz's default.
for t in "${targets[@]}"; do
    cargo +nightly fuzz build -a --target-dir "$CARGO_TARGET_DIR" "$t"
done

declare -A execs
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    log="$work/$t.log"
    echo "== $t: ${seconds}s"
    set +e
    # Scratch corpus first (libFuzzer writes new inputs to the first directory only).
    cargo +nightly fuzz run -a --target-dir "$CARGO_TARGET_DIR" "$t" \
        "$work/corpus/$t" "$here/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=512 -timeout=10 \
        -max_len=65536 -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    set -e
    n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    execs[$t]="${n:-?}"
    if [ $rc -ne 0 ]; then
        echo "   FAILED (exit $rc), see $log:"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 5
    fi
done

echo "== executions per target (${seconds}s each)"
for t in "${targets[@]}"; do
    printf '%-12s %s\n' "$t" "${execs[$t]}"
done
