"""FSDP2 engine: `fully_shard` per DiT block, then the root (parallelize.py); its checkpoint state is DTensor shards.

Parameters, gradients and optimizer state are sharded over the ranks (dim-0 DTensor shards), and
so is the EMA: it averages each rank's local shard. bf16 runs with MixedPrecisionPolicy
(bf16 compute, fp32 gradient reduction, fp32 master weights).
"""
from __future__ import annotations

import contextlib

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from .engine import Engine, StepResult
from .ema import LocalEMA
from .optim import build_optimizer, clip_and_step, param_groups
from .meta_init import materialize_fsdp
from .parallelize import parallelize


class FSDPEngine(Engine):
    name = "fsdp"

    def __init__(self, objective, cfg, env, device):
        super().__init__(objective, cfg, env, device)
        t = cfg.train
        if t.precision == "fp16":
            raise ValueError("parallel.engine=fsdp supports train.precision fp32 or bf16; use bf16 (or deepspeed/ddp for fp16)")
        self.accum = t.grad_accum
        self.mesh = init_device_mesh(device.type, (env.world_size,))
        mp = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if t.precision == "bf16" else None,
            reduce_dtype=torch.float32,
            # DiT.forward casts its input to the weights' dtype itself; the diffusion maths
            # (noise, x_t, targets) at the root stays fp32.
            cast_forward_inputs=False,
        )
        self.module = parallelize(objective, cfg, device, mesh=self.mesh, mp_policy=mp)
        if getattr(objective, "deferred_init", None) == "meta":
            materialize_fsdp(objective, device)  # built on the meta device: fill the shards now
        self.optimizer = build_optimizer(
            param_groups(objective, t.lr, t.weight_decay, cfg.diffusion.ant_lr), (t.beta1, t.beta2), device
        )
        self.ema = LocalEMA(self._local_dit())

    def _local_dit(self) -> list[torch.Tensor]:
        return [p.to_local() for p in self.objective.dit.parameters()]

    def accumulate(self, sync):
        self.objective.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def backward(self, loss):
        (loss / self.accum).backward()

    def step(self):
        return StepResult(*clip_and_step(self.optimizer, self.cfg.train.grad_clip))

    def _ema_state(self) -> dict[str, DTensor]:
        """The EMA shards as DTensors laid out like the parameters (what DCP saves/loads)."""
        out = {}
        for (name, p), shadow in zip(self.objective.dit.named_parameters(), self.ema.shadow):
            out[name] = DTensor.from_local(shadow, p.device_mesh, p.placements, run_check=False,
                                           shape=p.shape, stride=p.stride())
        return out

    def _gather(self, tensors) -> dict[str, torch.Tensor] | None:
        def full_tensors():
            for (name, p), local in zip(self.objective.dit.named_parameters(), tensors):
                yield name, DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                                               shape=p.shape, stride=p.stride()).full_tensor()

        return self._collect(full_tensors())
