#!/usr/bin/env bash
# Everything a GPU lease is for, in one call that fits a 10-minute command limit (the device
# tool lends a machine for 15 minutes in all, start-up included):
#
#   1. install the package offline (the GPU image has torch, triton, transformers, pytest,
#      pytest-benchmark, scikit-learn, scipy, setuptools; no network);
#   2. the compiled Triton kernels against the reference on CUDA tensors
#      (INFORM_FAST_TEST_GPU=1: tests/test_kernels_vib.py, the triton/cuda tests of the
#      detection files);
#   3. the benchmarks at --gpu-sizes, most important first, each stage with its own time limit
#      and its own JSON, so whatever finishes comes back even if a later stage runs out of time,
#      and a kernel-by-kernel profile of the head at the goal size (benchmarks/profile_head.py).
#
# Usage (repository root):  OUT=/some/dir bash benchmarks/gpu_session.sh
# Without OUT, results go to benchmarks/results/gpu-run/: session.log, one JSON per benchmark
# stage and performance.md (a draft report of this run; at most 8 files, what the tool returns). Stage limits can be scaled with
# STAGE_SCALE (e.g. 0.5 for a dry run); SKIP_INSTALL=1 uses the package as installed. On a machine without CUDA the script runs the same
# stages at the small CPU sizes (a plumbing check: no --gpu-sizes, tests on the interpreter).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/benchmarks/results/gpu-run}
mkdir -p "$OUT"
LOG=$OUT/session.log  # one log: the device tool returns at most 8 files from $OUT
: > "$LOG"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SCALE=${STAGE_SCALE:-1}
STAMP=$(date -u +%F)
started=$SECONDS

limit() { "$PY" -c "print(max(5, int($1 * $SCALE)))"; }
stage() {  # stage NAME SECONDS command...
    local name=$1 seconds
    seconds=$(limit "$2")
    shift 2
    echo "=== $name (limit ${seconds}s, at $((SECONDS - started))s)" | tee -a "$LOG"
    # SIGINT first: pytest then still writes the benchmark JSON of what finished
    timeout --signal=INT --kill-after=15 "$seconds" "$@" > "$OUT/stage.tmp" 2>&1
    local rc=$?
    cat "$OUT/stage.tmp" >> "$LOG"
    tail -n 25 "$OUT/stage.tmp"
    rm -f "$OUT/stage.tmp"
    echo "=== $name: exit $rc after $((SECONDS - started))s" | tee -a "$LOG"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
} | tee -a "$LOG"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    # the C++ extension serves the CPU paths only; skipping it saves the build
    INFORM_FAST_BUILD_CPP=0 "$PY" -m pip install -q --no-build-isolation --no-deps --no-index -e . >> "$LOG" 2>&1 \
        || { echo "install failed:"; tail -n 30 "$LOG"; exit 1; }
fi
"$PY" - <<'EOF' | tee -a "$LOG"
import torch, triton, transformers, inform_fast
print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    GPU=(--gpu-sizes)
    export INFORM_FAST_TEST_GPU=1
    PREFIX=$("$PY" -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")  # h100 / h200
else
    GPU=()
    PREFIX=cpu-dryrun
fi
BENCH=("$PY" -m pytest -q -p no:cacheprovider --benchmark-only "${GPU[@]}")

stage gpu_tests 110 "$PY" -m pytest -q -p no:cacheprovider -x -rs \
    tests/test_kernels_vib.py tests/test_dbscan.py tests/test_neighbors.py tests/test_mahalanobis.py tests/test_icds.py \
    -k "triton or cuda or kernel"
stage bench_head_goal 100 "${BENCH[@]}" benchmarks/bench_head.py benchmarks/bench_ceilings.py \
    -k "B512-H4096 or B32-H256 or ceiling" --benchmark-json "$OUT/$PREFIX-$STAMP-head-goal.json"
if [ ${#GPU[@]} -gt 0 ]; then  # kernel-by-kernel time of the goal size: fused (both forward layouts) and reference
    stage profile_head 50 bash -c "\"$PY\" benchmarks/profile_head.py --backend triton && \"$PY\" benchmarks/profile_head.py --backend triton --h-splits 0 && \"$PY\" benchmarks/profile_head.py --backend reference"
else
    stage profile_head 40 "$PY" benchmarks/profile_head.py --pairs 32 --hidden 256
fi
stage bench_detection 140 "${BENCH[@]}" benchmarks/bench_detection.py benchmarks/bench_mahalanobis.py \
    --benchmark-json "$OUT/$PREFIX-$STAMP-detection.json"
stage bench_reward_model 80 "${BENCH[@]}" benchmarks/bench_reward_model.py \
    --benchmark-json "$OUT/$PREFIX-$STAMP-reward-model.json"
stage bench_head_sizes 60 "${BENCH[@]}" benchmarks/bench_head.py -k "not B512-H4096" \
    --benchmark-json "$OUT/$PREFIX-$STAMP-head-sizes.json"

"$PY" benchmarks/report.py "$OUT"/*.json --preamble docs/performance_notes.md --output "$OUT/performance.md" \
    >> "$LOG" 2>&1 || tail -n 20 "$LOG"
echo "=== done after $((SECONDS - started))s; files in $OUT:"
ls -la "$OUT"
