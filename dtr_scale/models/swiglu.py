"""SwiGLU feed-forward (Shazeer, 2020): silu(x W1) * (x W2) then W3, with W1 and W2 in one matmul."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden(gelu_width: int) -> int:
    """LightningDiT's width rule: 2/3 of the GELU MLP's hidden width (int(2/3 · 4C)), which keeps
    the parameter count and FLOPs of the MLP about those of the GELU MLP with its two matrices."""
    return int(2 / 3 * gelu_width)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)  # [gate | value], split in forward
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)
