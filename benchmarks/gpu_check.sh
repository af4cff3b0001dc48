#!/usr/bin/env bash
# The one prepared GPU check: on a machine with one CUDA GPU, in at most 9 minutes with installing the
# carried bundle, it runs the GPU tests and every benchmark that writes a GPU row of BENCHMARKS.md, each
# step under a time limit, and logs everything to benchmarks/gpu_check.log.
#
#   ../shared/tools/gpu-bundle.sh 'ray[tune]==2.60.0' 'optuna==5.0.0' 'mlflow-skinny==3.17.2'   # here, once
#   bash benchmarks/gpu_check.sh          # on the GPU machine, the tree and .gpu/ carried (device tool)
#
# Without a GPU it stops at once with one line and exit 2, before writing anything. A step that fails
# or runs out of its time is named in the log and the summary, and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f .gpu/env.sh ] && source .gpu/env.sh >/dev/null
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU here ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA build:", torch.version.cuda or "none")' 2>&1 | tail -1)); run it on a GPU machine (BENCHMARKS.md: how to fill the GPU rows)" >&2
    exit 2
fi
export CHARSEARCH_SHAKESPEARE=${CHARSEARCH_SHAKESPEARE:-$PWD/data/tinyshakespeare/input.txt}
[ -f "$CHARSEARCH_SHAKESPEARE" ] || { echo "gpu_check: tiny-shakespeare not found at $CHARSEARCH_SHAKESPEARE (carry a copy)" >&2; exit 2; }
LOG=benchmarks/gpu_check.log
: > "$LOG"
failed=()
step() {  # step NAME SECONDS COMMAND...: one step, its output in the log, its end in the summary
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s): $*" >> "$LOG"
    timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" >> "$LOG"
    echo "$name: exit $rc, $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || failed+=("$name")
}
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$LOG" 2>&1
# limits: 460 s in all, with a minute for installing the bundle and starting: within 9 minutes
step "pytest -m gpu"  60 "$PY" -m pytest -q -m gpu -p no:cacheprovider
step "trainer"        40 "$PY" benchmarks/bench_trainer.py --device cuda
step "memory"         40 "$PY" benchmarks/bench_memory.py --steps 20
step "packing"       150 "$PY" benchmarks/bench_packing.py --device cuda --ks 1,2,4,8,16 --trial-time 10
step "search"        170 "$PY" benchmarks/bench_search_gpu.py --time 40
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: failed: ${failed[*]} (see $LOG)" >&2
    exit 1
fi
echo "gpu_check: every step passed; BENCHMARKS.md has the GPU rows (log: $LOG)"
