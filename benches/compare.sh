#!/usr/bin/env bash
# Side-by-side training throughput: quench (release build, Flex CPU) vs PyTorch, same six
# workloads (see `quench bench --help` and benches/compare_pytorch.py).
#
#   benches/compare.sh                      # all workloads, 3 interleaved rounds, medians
#   STEPS=100 WARMUP=10 ROUNDS=5 WORKLOADS=mlp-fp32,mlp-qat benches/compare.sh
#
# Rounds alternate quench and PyTorch so that load from other processes hits both alike; each
# column is the median over the rounds. Prints: workload | pytorch samples/s | quench samples/s |
# ratio (quench / pytorch). Raw JSON lines are kept in $OUT (default: a temporary directory).
# If PyTorch is not installed, its column reads n/a (install: pip install torch numpy).
set -euo pipefail

cd "$(dirname "$0")/.."
STEPS=${STEPS:-50}
WARMUP=${WARMUP:-10}
ROUNDS=${ROUNDS:-3}
WORKLOADS=${WORKLOADS:-mlp-fp32,mlp-qat,mlp-ternary,lenet-fp32,lenet-qat,distill}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

echo "building quench (release)…" >&2
cargo build --release --quiet --bin quench
TARGET=${CARGO_TARGET_DIR:-target}
QUENCH="$TARGET/release/quench"

: > "$OUT/quench.jsonl"
: > "$OUT/pytorch.jsonl"
torch_ok=1
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS: quench" >&2
    "$QUENCH" bench --workloads "$WORKLOADS" --steps "$STEPS" --warmup "$WARMUP" \
        | tee -a "$OUT/quench.jsonl" >&2
    if [ "$torch_ok" = 1 ]; then
        echo "round $round/$ROUNDS: pytorch" >&2
        set +e
        "$PYTHON" benches/compare_pytorch.py --workloads "$WORKLOADS" --steps "$STEPS" \
            --warmup "$WARMUP" > "$OUT/pytorch.round"
        rc=$?
        set -e
        if [ "$rc" = 2 ]; then
            echo "PyTorch is not available: its column is n/a (pip install torch numpy)" >&2
            torch_ok=0
        elif [ "$rc" != 0 ]; then
            echo "compare_pytorch.py failed (exit $rc)" >&2
            exit "$rc"
        else
            tee -a "$OUT/pytorch.jsonl" < "$OUT/pytorch.round" >&2
        fi
    fi
done

"$PYTHON" - "$OUT/pytorch.jsonl" "$OUT/quench.jsonl" "$WORKLOADS" <<'EOF'
import json, statistics, sys

def medians(path):
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                runs.setdefault(r["workload"], []).append(r["samples_per_s"])
    return {w: statistics.median(v) for w, v in runs.items()}

torch, quench = medians(sys.argv[1]), medians(sys.argv[2])
print(f"{'workload':<12} | {'pytorch samples/s':>17} | {'quench samples/s':>16} | {'ratio':>5}")
print(f"{'-' * 12}-+-{'-' * 17}-+-{'-' * 16}-+-{'-' * 5}")
for w in sys.argv[3].split(","):
    p, q = torch.get(w), quench.get(w)
    ps = f"{p:17.0f}" if p else f"{'n/a':>17}"
    qs = f"{q:16.0f}" if q else f"{'n/a':>16}"
    ratio = f"{q / p:5.2f}" if p and q else f"{'n/a':>5}"
    print(f"{w:<12} | {ps} | {qs} | {ratio}")
EOF
echo "raw JSON lines: $OUT" >&2
