"""2-D rotary position embedding of q and k (EVA-02's layout, as LightningDiT uses it).

Each head of size D is split in two halves: the first half is rotated by the token's row, the
second by its column. Within a half, channels (2k, 2k+1) form one rotated pair with frequency
θ_k = 10000^(-4k/D), k < D/4. Tokens are in the patch embedder's row-major order (row · g + col).
"""
from __future__ import annotations

import torch


def rope2d_tables(head_dim: int, grid_size: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (g², 1, D) in fp32, to broadcast over (N, L, H, D)."""
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2, device=device)[: half // 2].float() / half))
    # arange / g * g rather than arange: the same float rounding as LightningDiT's positions,
    # so that its weights see the same angles to the last bit.
    pos = torch.arange(grid_size, device=device) / grid_size * grid_size
    angles = torch.outer(pos, freqs).repeat_interleave(2, dim=-1)  # (g, D/2), pairs share a frequency
    g = grid_size
    table = torch.cat([angles[:, None, :].expand(g, g, half), angles[None, :, :].expand(g, g, half)], dim=-1)
    table = table.reshape(g * g, 1, head_dim)
    return table.cos(), table.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x: (N, L, H, D); rope: tables of `rope2d_tables` in x's dtype."""
    cos, sin = rope
    return x * cos + rotate_pairs(x) * sin
