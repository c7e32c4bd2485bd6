"""Uniform training-timestep sampling (the non-ANT case)."""

from __future__ import annotations

import torch


def uniform_timesteps(batch_size: int, num_timesteps: int = 1000, device=None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Long tensor of shape (batch_size,), each t uniform on 0..num_timesteps-1.

    Drawn on the generator's device (so a CPU generator works for a CUDA batch) and then moved.
    """
    if batch_size < 0 or num_timesteps < 1:
        raise ValueError(
            f"uniform_timesteps needs batch_size >= 0 and num_timesteps >= 1, "
            f"got {batch_size} and {num_timesteps}"
        )
    draw_device = generator.device if generator is not None else (device or "cpu")
    t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=draw_device)
    return t.to(device) if device is not None else t
