#!/usr/bin/env bash
# Side-by-side training throughput: quench (release build, Flex CPU) vs PyTorch, same six
# workloads (see `quench bench --help` and benches/compare_pytorch.py).
#
#   benches/compare.sh                      # all workloads, 3 interleaved rounds, medians
#   STEPS=100 WARMUP=10 ROUNDS=5 WORKLOADS=mlp-fp32,mlp-qat benches/compare.sh
#
# Rounds alternate quench and PyTorch so that load from other processes hits both alike. Both
# run with 1 and 2 threads (THREADS; quench through RAYON_NUM_THREADS, PyTorch through
# torch.set_num_threads); per workload and thread count the median over the rounds is taken,
# and each column shows the best thread count. Prints: workload | pytorch samples/s | quench
# samples/s | ratio (quench / pytorch). Raw JSON lines are kept in $OUT (default: a temporary
# directory).
# If PyTorch is not installed, its column reads n/a (install: pip install torch numpy).
set -euo pipefail

cd "$(dirname "$0")/.."
STEPS=${STEPS:-50}
WARMUP=${WARMUP:-10}
ROUNDS=${ROUNDS:-3}
WORKLOADS=${WORKLOADS:-mlp-fp32,mlp-qat,mlp-ternary,lenet-fp32,lenet-qat,distill}
THREADS=${THREADS:-1,2}
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
    for t in ${THREADS//,/ }; do
        echo "round $round/$ROUNDS: quench, $t thread(s)" >&2
        RAYON_NUM_THREADS=$t "$QUENCH" bench --workloads "$WORKLOADS" --steps "$STEPS" \
            --warmup "$WARMUP" | tee -a "$OUT/quench.jsonl" >&2
    done
    if [ "$torch_ok" = 1 ]; then
        echo "round $round/$ROUNDS: pytorch" >&2
        set +e
        "$PYTHON" benches/compare_pytorch.py --workloads "$WORKLOADS" --steps "$STEPS" \
            --warmup "$WARMUP" --threads "$THREADS" > "$OUT/pytorch.round"
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

def best_medians(path):
    """Per workload: (median samples/s of the best thread count, that thread count)."""
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            per = r.get("per_threads") or {str(r.get("threads", "?")): r["samples_per_s"]}
            for t, v in per.items():
                runs.setdefault(r["workload"], {}).setdefault(t, []).append(v)
    out = {}
    for w, by_t in runs.items():
        med = {t: statistics.median(v) for t, v in by_t.items()}
        t = max(med, key=med.get)
        out[w] = (med[t], t)
    return out

torch, quench = best_medians(sys.argv[1]), best_medians(sys.argv[2])

def cell(v, width):
    return f"{v[0]:.0f} ({v[1]}t)".rjust(width) if v else "n/a".rjust(width)

print(f"{'workload':<12} | {'pytorch samples/s':>17} | {'quench samples/s':>16} | {'ratio':>5}")
print(f"{'-' * 12}-+-{'-' * 17}-+-{'-' * 16}-+-{'-' * 5}")
for w in sys.argv[3].split(","):
    p, q = torch.get(w), quench.get(w)
    ratio = f"{q[0] / p[0]:5.2f}" if p and q else f"{'n/a':>5}"
    print(f"{w:<12} | {cell(p, 17)} | {cell(q, 16)} | {ratio}")
print("(Nt: best thread count; medians over the rounds; ratio = quench / pytorch)")
EOF
echo "raw JSON lines: $OUT" >&2
