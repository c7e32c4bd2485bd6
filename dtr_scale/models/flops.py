"""Analytic FLOP counts of the DiT forward pass, for TFLOP/s logging and the benchmarks.

Counts multiply-adds as 2 FLOPs in the matmuls (linear layers, attention scores and values);
elementwise work is ignored, so this is the "model FLOPs" convention (training = 3x forward).
"""
from __future__ import annotations

from torch import nn

from .dit import DiT


def dit_forward_flops(model: DiT, batch_size: int) -> int:
    C, L, D = model.hidden_size, model.x_embedder.num_patches, model.depth
    p2c = model.patch_size**2
    per_block_tokens = 2 * L * (C * 3 * C + C * C + mlp_macs_per_token(model))  # qkv, proj, MLP
    per_block_attn = 2 * 2 * L * L * C  # QKᵀ and (scores)V
    per_block_cond = 2 * C * 6 * C  # adaLN modulation (once per sample)
    embed = 2 * L * p2c * model.in_channels * C + 2 * (256 * C + C * C)
    final = 2 * L * C * p2c * model.out_channels + 2 * C * 2 * C
    return batch_size * (D * (per_block_tokens + per_block_attn + per_block_cond) + embed + final)


def dit_train_flops(model: DiT, batch_size: int) -> int:
    return 3 * dit_forward_flops(model, batch_size)


def mlp_macs_per_token(model: DiT) -> int:
    """Multiply-adds of one token through one block's MLP, read off its linear layers: 8C² for
    DiT's GELU MLP (C -> 4C -> C), 3·C·h for SwiGLU (C -> 2h, h -> C; h = int(2/3 · 4C))."""
    mlp = model.blocks[0].mlp
    return sum(m.in_features * m.out_features for m in mlp.modules() if isinstance(m, nn.Linear))
