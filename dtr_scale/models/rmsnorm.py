"""RMSNorm (Zhang & Sennrich, 2019) with a learned per-channel scale, as LightningDiT uses it."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps  # LightningDiT's value
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mean square is taken in fp32 even for bf16 activations (a bf16 sum of squares over
        # 1152 channels loses the small ones), then the result goes back to the input's dtype.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight
