"""Analytic FLOP counts of the DiT forward pass, for TFLOP/s logging and the benchmarks.

Counts multiply-adds as 2 FLOPs in the matmuls (linear layers, attention scores and values);
elementwise work is ignored, so this is the "model FLOPs" convention (training = 3x forward).
"""
from __future__ import annotations

from .dit import DiT


def dit_forward_flops(model: DiT, batch_size: int) -> int:
    C, L, D = model.hidden_size, model.x_embedder.num_patches, model.depth
    p2c = model.patch_size**2
    per_block_tokens = 2 * L * (C * 3 * C + C * C + 2 * C * 4 * C)  # qkv, proj, fc1 + fc2
    per_block_attn = 2 * 2 * L * L * C  # QKᵀ and (scores)V
    per_block_cond = 2 * C * 6 * C  # adaLN modulation (once per sample)
    embed = 2 * L * p2c * model.in_channels * C + 2 * (256 * C + C * C)
    final = 2 * L * C * p2c * model.out_channels + 2 * C * 2 * C
    return batch_size * (D * (per_block_tokens + per_block_attn + per_block_cond) + embed + final)


def dit_train_flops(model: DiT, batch_size: int) -> int:
    return 3 * dit_forward_flops(model, batch_size)
