#!/usr/bin/env bash
# One GPU check, for whenever a CUDA machine is at hand (≤ 8 min on an H100/H200):
#   1. the GPU-marked tests (xformers vs SDPA parity, bf16 and fp16 steps, FusedAdam, no host sync)
#   2. benchmarks/gpu_check.py: attention backends, DiT-XL/2 + DTR bf16 training img/s and MFU
#      (eager/compiled × activation checkpointing off/on), the loader's rate against it
#   3. on CUDA only: benchmarks/async_checkpoint.py, the training stall of a background checkpoint
#      against a synchronous one, DiT-B/2 (about 1 min; results/async_checkpoint_cuda.json)
# Writes benchmarks/results/gpu.json and prints a short table.
#
#   bash benchmarks/gpu_check.sh [--device cpu --smoke] [--out FILE] [--peak-tflops N]
#
# `--device cpu --smoke` runs every piece on tiny sizes (the CI test does this).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
junit="$(mktemp -t gpu_tests.XXXXXX.xml)"
trap 'rm -f "$junit"' EXIT
# Test failures are recorded in the JSON, not fatal: the measurements still run.
python -m pytest -q -m gpu -p no:cacheprovider --junitxml="$junit" tests/test_gpu.py tests/test_dit.py || true
python benchmarks/gpu_check.py --tests-junit "$junit" "$@"
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  ranks="$(python -c 'import torch; print(min(2, torch.cuda.device_count()))')"
  python benchmarks/async_checkpoint.py --device cuda --nproc "$ranks" --models DiT-B/2 --reps 2 --steps 3 \
    --out benchmarks/results/async_checkpoint_cuda.json || echo "async_checkpoint.py failed (its output is above)"
fi
