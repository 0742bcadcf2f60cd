#!/usr/bin/env bash
# The first ten minutes with a GPU, in one command (run from anywhere; ~5-8 minutes on an H200):
#   1. the CUDA tests (kernel, engine, op counts; the CUDA variants run instead of being skipped),
#   2. bench/gpu_probe.py: syncs, kernels, device time and wall time per 512-item batch, cold and
#      warm, and identical bytes run to run, on the default table and a Qwen-shaped one (bf16),
#   3. bench/run.py's scoring stage on the Qwen-sized table against the per-item loop.
# Each step has its own time limit (500 s in all, inside one 10-minute device call) and the script
# goes on after a failure (the tests without -x: a first run should show every CUDA failure at
# once); the exit status is non-zero if any step failed. The figures go into docs/performance.md
# ("GPU"). It needs the CUDA build of torch on the GPU host (the python it runs must have it; the
# first check says so) and this package's dependencies (safetensors, tokenizers, numpy, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD:$PWD/clients${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() { echo; echo "=== $1"; shift; "$@" || { echo "=== FAILED (exit $?): $*"; status=1; }; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
python - <<'PY' || exit 2
import torch
assert torch.cuda.is_available(), "no CUDA device: nothing to check"
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())
PY
step "CUDA tests" timeout 200 python -m pytest -q -rs -p no:cacheprovider \
    tests/test_engine_bmas.py tests/test_engine_ops.py tests/test_engine_scorer.py
step "probe: one 512-item batch on the device" timeout 150 python bench/gpu_probe.py --reps 20
step "bench: Qwen-sized table, scoring stage" timeout 150 python bench/run.py --table qwen --kernel-only --quick
exit $status
