#!/usr/bin/env bash
# Encode ImageNet train (class-per-folder) with SD-VAE at 256px on one node's GPUs.
# Usage: data_prep/imagenet256_sdvae.sh IMAGENET_TRAIN_DIR VAE_DIR OUT_DIR [NPROC]
# VAE_DIR: a local copy of stabilityai/sd-vae-ft-ema (huggingface-cli download ... --local-dir).
# Rerun the same command after a crash: finished shards are kept.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 IMAGENET_TRAIN_DIR VAE_DIR OUT_DIR [NPROC]" >&2
  exit 2
fi
NPROC="${4:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
exec torchrun --standalone --nproc_per_node="$NPROC" -m dtr_scale.prep \
  --source "imagefolder:$1" --vae "$2" --out "$3" --resolution 256 --shard-size 1000 --batch-size 64
