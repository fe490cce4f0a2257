#!/usr/bin/env bash
# The GPU check, for whoever has a CUDA GPU (docs/PERFORMANCE.md, "On a GPU"):
# the Triton kernels' tests compiled for the GPU (not the interpreter), then
# `spikeboard bench --device cuda`. About 5-10 minutes on one H100; run from the
# repository root. Writes everything to $OUT (default gpu-check/) as well.
#
#   scripts/gpu_check.sh            # tests + bench at batch 64 x 2000 steps, 3 repetitions
#   REPS=1 scripts/gpu_check.sh     # quicker bench
set -uo pipefail
OUT=${OUT:-gpu-check}
REPS=${REPS:-3}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-$(pwd)}
unset TRITON_INTERPRET  # compile for the GPU
status=0

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"

# 1. the kernels against the reference on the GPU, the slow canonical-network trials and the
#    packed training loop (two runs as one pack against each alone) included
timeout 300 python -m pytest -q -p no:cacheprovider -m "slow or not slow" \
  tests/engine/test_gpu_kernels.py 2>&1 | tee "$OUT/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# 2. launches, fused vs torch-op loop (interleaved), peak memory, projected cells
timeout 420 python -m engine.bench --device cuda --reps "$REPS" 2>&1 | tee "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "gpu_check: exit $status (outputs in $OUT/)"
exit $status
