"""Analytic FLOP counts of the DiT forward pass, for TFLOP/s and MFU logging and the benchmarks.

Counts multiply-adds as 2 FLOPs in the matmuls (linear layers, the patch conv, attention scores
and values); elementwise work (norms, modulation, softmax, GELU, the routing masks) is ignored,
so this is the "model FLOPs" convention of MFU. With N samples, L = (input_size / p)² tokens,
width C, depth D, MLP multiply-adds per token A (8C² for DiT's GELU MLP C -> 4C -> C; 3Ch for
SwiGLU with h = int(2/3 · 4C); read off the block's linear layers), p²·c_in / p²·c_out values per
patch in / out and F = 256 timestep frequencies:

    block   = 2L(3C² + C² + A)     qkv, proj, MLP
            + 4L²C                  QKᵀ and (softmax)·V, all heads together (H · L² · C/H each)
            + 12C²                  adaLN modulation, once per sample
    forward = N · (D · block + 2L·p²c_in·C + 2(F·C + C²) + 2L·C·p²c_out + 4C²)
    train   = 3 · forward           backward = 2 × forward; activation recomputation not counted

DTR routing changes none of it: a routed block multiplies its input by a channel mask, but the
matmuls still run over all C channels (LayerNorm makes the masked-out inputs non-zero again), so
the dense work is the plain DiT's. The label embedding is a table lookup (no FLOPs).
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
    embed = 2 * L * p2c * model.in_channels * C + 2 * (model.t_embedder.frequency_embedding_size * C + C * C)
    final = 2 * L * C * p2c * model.out_channels + 2 * C * 2 * C
    return batch_size * (D * (per_block_tokens + per_block_attn + per_block_cond) + embed + final)


def dit_train_flops(model: DiT, batch_size: int) -> int:
    return 3 * dit_forward_flops(model, batch_size)


def mlp_macs_per_token(model: DiT) -> int:
    """Multiply-adds of one token through one block's MLP, read off its linear layers: 8C² for
    DiT's GELU MLP (C -> 4C -> C), 3·C·h for SwiGLU (C -> 2h, h -> C; h = int(2/3 · 4C))."""
    mlp = model.blocks[0].mlp
    return sum(m.in_features * m.out_features for m in mlp.modules() if isinstance(m, nn.Linear))
