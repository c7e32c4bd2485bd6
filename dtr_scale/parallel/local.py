"""Single-process and DDP engines: full parameters and optimizer state on every rank.

Mixed precision is torch.autocast (bf16, or fp16 with a GradScaler on CUDA); parameters, EMA and
optimizer state stay fp32. The checkpoint state is the base engine's canonical one (plain full
tensors; DCP writes each replicated tensor once).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .engine import Engine, StepResult
from .optim import clip_and_step
from .parallelize import parallelize

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AutocastModule(nn.Module):
    """Runs the wrapped module under autocast, so that the loop's call is the same everywhere."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None, device_type: str):
        super().__init__()
        self.inner = module
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, *args, **kwargs):
        if self.dtype is None:
            return self.inner(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.inner(*args, **kwargs)


class SingleEngine(Engine):
    name = "single"

    def prepare(self, objective):
        objective.to(self.device)
        parallelize(objective, self.cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.cfg.train.precision == "fp16" else None

    def wrap(self, objective, optimizer):
        return self.replicate(AutocastModule(objective, _DTYPES.get(self.cfg.train.precision), self.device.type)), optimizer

    def replicate(self, module: nn.Module) -> nn.Module:
        """One process: the module as it is (DDP wraps it to all-reduce the gradients)."""
        return module

    def local_parameters(self) -> list[torch.Tensor]:
        return list(self.objective.dit.parameters())

    def backward(self, loss):
        loss = loss / self.accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self):
        return StepResult(*clip_and_step(self.optimizer, self.cfg.train.grad_clip, self.scaler))


class DDPEngine(SingleEngine):
    name = "ddp"

    def replicate(self, module):
        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers (the routing masks) never change during training: no per-step broadcast.
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def accumulate(self, sync):
        return contextlib.nullcontext() if sync else self.module.no_sync()
