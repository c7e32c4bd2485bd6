"""Exponential moving average of the parameters a rank holds.

The engines hand in "local" tensors: full parameters (single, DDP, ZeRO-1/2), the rank's DTensor
shard (FSDP2) or its ZeRO-3 partition. The average therefore lives exactly where the parameters
live and is never gathered to one rank except for export. The shadow is kept in fp32 even when
the parameters are bf16, so that (1 - decay)·(p - ema) ~ 1e-4 updates are not rounded away.
"""
from __future__ import annotations

import torch


class LocalEMA:
    def __init__(self, tensors: list[torch.Tensor]):
        self.shadow = [t.detach().to(torch.float32).clone() for t in tensors]

    @torch.no_grad()
    def update(self, tensors: list[torch.Tensor], decay: float, applied: torch.Tensor | bool = True) -> None:
        """`applied` False leaves the average as it is; as a device tensor it is decided on the
        device (weight 0), so that a skipped step needs no host read."""
        if len(tensors) != len(self.shadow):
            raise RuntimeError(f"EMA tracks {len(self.shadow)} tensors, got {len(tensors)}")
        current = [t.detach().to(torch.float32) for t in tensors]
        if not isinstance(applied, torch.Tensor):
            if applied:
                torch._foreach_lerp_(self.shadow, current, 1.0 - decay)
            return
        weight = applied.to(device=self.shadow[0].device, dtype=torch.float32) * (1.0 - decay)
        torch._foreach_lerp_(self.shadow, current, [weight] * len(self.shadow))

