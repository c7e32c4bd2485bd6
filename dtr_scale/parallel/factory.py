"""`engine_class` / `build_engine`: the engine named by `parallel.engine`, with its preconditions checked.

Kept beside the engines (not in `engine.py`) so that the base class never imports its subclasses;
each engine module is imported only when chosen, so DeepSpeed is not loaded for a DDP run.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError
from .engine import Engine
from .process_group import DistEnv


def engine_class(cfg, env: DistEnv, device: torch.device) -> type[Engine]:
    """The engine class named by `parallel.engine`, once its preconditions hold. The caller builds
    the DiT under `engine_class(...).init_context(...)`, then constructs the engine around it."""
    name = cfg.parallel.engine
    if name == "single" and env.world_size > 1:
        raise ConfigError(f"parallel.engine=single with {env.world_size} processes; use ddp, fsdp or deepspeed")
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "train.precision=fp16 needs CUDA (loss scaling of fp16 kernels); on the CPU use fp32 "
            "(or bf16 where the CPU supports it)"
        )
    if name in ("ddp", "fsdp") and not torch.distributed.is_initialized():
        raise RuntimeError(
            f"parallel.engine={name} needs a process group: launch with torchrun, srun or deepspeed"
        )
    if name == "single":
        from .local import SingleEngine

        return SingleEngine
    if name == "ddp":
        from .local import DDPEngine

        return DDPEngine
    if name == "fsdp":
        from .fsdp import FSDPEngine

        return FSDPEngine
    if name == "deepspeed":
        from .deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine
    raise ValueError(f"parallel.engine: unknown engine {name!r}")


def build_engine(objective: nn.Module, cfg, env: DistEnv, device: torch.device) -> Engine:
    """Wrap `objective` (built whole) with the engine named by `parallel.engine`."""
    return engine_class(cfg, env, device)(objective, cfg, env, device)
