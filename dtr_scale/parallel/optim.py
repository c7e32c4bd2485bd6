"""Optimizer parameter groups, optimizer construction and the LR schedule, shared by every engine."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def param_groups(objective: nn.Module, lr: float, weight_decay: float, ant_lr: float) -> list[dict]:
    """AdamW groups: decay on weight matrices only (biases, embeddings' 1-D params untouched),
    and ANT-UW's log-variances in their own group with their own LR and no decay.
    Every group records `base_lr`, which the warmup schedule scales."""
    decay, no_decay = [], []
    for name, p in objective.dit.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "base_lr": lr},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "base_lr": lr},
    ]
    if objective.weighting is not None:
        groups.append({"params": [objective.weighting.log_vars], "lr": ant_lr, "weight_decay": 0.0, "base_lr": ant_lr})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], betas: tuple[float, float], device: torch.device) -> torch.optim.Optimizer:
    """AdamW with torch's fused kernel (CUDA and CPU): one pass over each tensor instead of the
    ~10 of foreach, which measured 0.08 s vs 0.48 s per step for DiT-B/2 on the CPU."""
    return torch.optim.AdamW(groups, betas=betas, eps=1e-8, fused=True)


def clip_and_step(optimizer: torch.optim.Optimizer, max_norm: float, scaler=None) -> tuple[float, bool]:
    """Clip the global gradient norm (0 = no clipping) and step, unless the norm is non-finite.

    Returns (norm before clipping, whether the step was applied); the gradients are cleared
    either way. With an fp16 GradScaler the gradients are unscaled first and a skipped step
    halves the scale. Works on DTensor (FSDP2) gradients: their norm is reduced over the mesh.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
    norm = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    applied = math.isfinite(norm)
    if applied and scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif applied:
        optimizer.step()
    elif scaler is not None:
        scaler.update(scaler.get_scale() / 2)
    optimizer.zero_grad(set_to_none=True)
    return norm, applied


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to the base LR over `warmup_steps` optimizer steps, then constant (DiT)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
