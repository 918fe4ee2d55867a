#!/usr/bin/env bash
# Fake-quant and ternary training cost over quench's own fp32 step, measured side by side in one
# process: `quench bench --interleave` builds the fp32, QAT and ternary models together and lets
# them take turns (BLOCK steps each), so load from other processes falls on all of them alike.
# For each pair (mlp-qat and mlp-ternary vs mlp-fp32, lenet-qat vs lenet-fp32) it prints the
# overhead from the total times and the median over turns of the paired block ratios.
#
#   benches/overhead.sh                          # 300 timed steps, blocks of 10, 1 and 2 threads
#   STEPS=600 BLOCK=20 THREADS=2 benches/overhead.sh
#
# Raw JSON lines are kept in $OUT (default: a temporary directory).
set -euo pipefail

cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
WARMUP=${WARMUP:-20}
BLOCK=${BLOCK:-10}
THREADS=${THREADS:-1,2}
WORKLOADS=${WORKLOADS:-mlp-fp32,mlp-qat,mlp-ternary,lenet-fp32,lenet-qat}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

echo "building quench (release)…" >&2
cargo build --release --quiet --bin quench
TARGET=${CARGO_TARGET_DIR:-target}
QUENCH="$TARGET/release/quench"

for t in ${THREADS//,/ }; do
    echo "quench, $t thread(s), interleaved blocks of $BLOCK steps" >&2
    RAYON_NUM_THREADS=$t "$QUENCH" bench --workloads "$WORKLOADS" --steps "$STEPS" \
        --warmup "$WARMUP" --interleave "$BLOCK" > "$OUT/interleaved-${t}t.jsonl"
done

"$PYTHON" - "$OUT" "$THREADS" <<'PY'
import json, statistics, sys

out, threads = sys.argv[1], sys.argv[2].split(",")
pairs = [("mlp-qat", "mlp-fp32"), ("mlp-ternary", "mlp-fp32"), ("lenet-qat", "lenet-fp32")]
print(f"{'workload':<12} | {'vs':<10} | thr | {'samples/s':>9} | {'base':>9} | {'total':>6} | {'paired median':>13}")
for t in threads:
    runs = {}
    with open(f"{out}/interleaved-{t}t.jsonl") as f:
        for line in f:
            if line.startswith("{"):
                r = json.loads(line)
                runs[r["workload"]] = r
    for w, base in pairs:
        if w not in runs or base not in runs:
            continue
        a, b = runs[w], runs[base]
        total = a["seconds"] / b["seconds"] - 1
        paired = statistics.median(x / y for x, y in zip(a["block_seconds"], b["block_seconds"])) - 1
        print(f"{w:<12} | {base:<10} | {t:>3} | {a['samples_per_s']:9.0f} | {b['samples_per_s']:9.0f} "
              f"| {total:+6.1%} | {paired:+13.1%}")
print("(overhead = extra time per step over the fp32 workload; total: whole timed run; paired "
      "median: median over turns of block-time ratios)")
PY
echo "raw JSON lines: $OUT" >&2
