"""An independent, deliberately literal forward pass of a routed DiT, for parity tests.

Written from the DTR reference semantics (docs/architecture.md): per-block T×C mask tables indexed by the
timestep, the block formula spelled out with explicit LayerNorm/softmax maths. It reads the
weights from a `DiT` but shares none of its forward code.
"""
import math

import torch
import torch.nn.functional as F


def layer_norm(x, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def attention(block, x):
    B, L, C = x.shape
    H = block.attn.num_heads
    qkv = F.linear(x, block.attn.qkv.weight, block.attn.qkv.bias).view(B, L, 3, H, C // H)
    q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // H), dim=-1)
    out = (w @ v).permute(0, 2, 1, 3).reshape(B, L, C)
    return F.linear(out, block.attn.proj.weight, block.attn.proj.bias)


def mlp(block, x):
    h = F.linear(x, block.mlp.fc1.weight, block.mlp.fc1.bias)
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    return F.linear(h, block.mlp.fc2.weight, block.mlp.fc2.bias)


def routed_block(block, x, c, m):
    """m: (N, 1, C) float mask, or None for plain DiT."""
    mod = F.linear(F.silu(c), block.adaLN_modulation[1].weight, block.adaLN_modulation[1].bias)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
    r = x * m if m is not None else x
    r = r + gate_msa[:, None] * attention(block, modulate(layer_norm(r), shift_msa, scale_msa))
    r = r + gate_mlp[:, None] * mlp(block, modulate(layer_norm(r), shift_mlp, scale_mlp))
    return r + x * (1 - m) if m is not None else r


def forward(model, x, t, y, tables=None):
    """tables: list of per-block (T, C) float mask tables, or None for plain DiT."""
    h = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder.embedding_table(y)
    for i, block in enumerate(model.blocks):
        m = None if tables is None else tables[i].index_select(0, t).unsqueeze(1)
        h = routed_block(block, h, c, m)
    return model.unpatchify(model.final_layer(h, c))
