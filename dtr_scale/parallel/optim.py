"""Optimizer construction, clipping with a device-side skip, and the LR schedule, shared by every
engine (the parameter groups come from the objective: `objective.param_groups`)."""
from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def build_optimizer(groups: list[dict], betas: tuple[float, float], device: torch.device) -> torch.optim.Optimizer:
    """AdamW with torch's fused kernel (CUDA and CPU): one pass over each tensor instead of the
    ~10 of foreach, which measured 0.08 s vs 0.48 s per step for DiT-B/2 on the CPU."""
    return torch.optim.AdamW(groups, betas=betas, eps=1e-8, fused=True)


def clip_and_step(optimizer: torch.optim.Optimizer, max_norm: float, scaler=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the global gradient norm (0 = no clipping) and step, unless the norm is non-finite.

    Returns (norm before clipping, whether the step was applied) as device tensors, and decides
    the skip on the device, with no host read: torch's fused AdamW takes a `found_inf` flag (the
    way GradScaler drives it) and then leaves parameters, moments and step count untouched. The
    gradients are cleared either way. With an fp16 GradScaler the scaler's own inf check skips the
    step and halves the scale. Works on DTensor (FSDP2) gradients: their norm is reduced over the mesh.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
    norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
    applied = torch.isfinite(norm)
    if scaler is not None:
        scaler.step(optimizer)  # fused AdamW: the scaler passes its found_inf, no host read
        scaler.update()
    elif optimizer.defaults.get("fused"):
        optimizer.grad_scale, optimizer.found_inf = None, (~applied).to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif applied:  # any other optimizer: a host read decides
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm.detach(), applied


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to the base LR over `warmup_steps` optimizer steps, then constant (DiT)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
