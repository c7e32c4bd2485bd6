"""FSDP2 engine: `fully_shard` per DiT block, then the root (parallelize.py); its checkpoint state is DTensor shards.

Parameters, gradients and optimizer state are sharded over the ranks (dim-0 DTensor shards), and
so is the EMA: it averages each rank's local shard. bf16 runs with MixedPrecisionPolicy
(bf16 compute, fp32 gradient reduction, fp32 master weights).

`parallel.meta_init: true` builds a large DiT without holding it whole on any rank: the caller
builds it on the meta device (`init_context`: shapes only), `prepare` shards it, allocates the
local shards (`to_empty`) and fills them (`MetaBuild`). The weights equal the eager init's for the
same seed. Random initialisation cannot be split by shard (each rank would need the generator's
state in the middle of a tensor), so every rank replays the eager init's random draws in the same
order with the same global generator, on the CPU, one FULL parameter at a time, and keeps only its
own shard: the peak extra memory is the largest single parameter (DiT-XL/2: 32 MiB), not the
model. The replay has two parts, as the eager build does: the modules' constructor inits
(`reset_parameters`, overwritten later but drawing random numbers) and `DiT.init_plan()`.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch import nn
from torch.distributed.tensor import DTensor

from .engine import Engine, StepResult
from .optim import clip_and_step
from .parallelize import parallelize


class FSDPEngine(Engine):
    name = "fsdp"

    @classmethod
    def init_context(cls, cfg, env, device):
        """`parallel.meta_init`: the DiT is built on the meta device (shapes only, no memory)."""
        return torch.device("meta") if cfg.parallel.meta_init else contextlib.nullcontext()

    def prepare(self, objective):
        """meta → parallelize → to_empty → init weights, as torchtitan does it (see the module notes)."""
        precision = self.cfg.train.precision
        if precision == "fp16":
            raise ValueError("parallel.engine=fsdp supports train.precision fp32 or bf16; use bf16 (or deepspeed/ddp for fp16)")
        self.mesh = init_device_mesh(self.device.type, (self.env.world_size,))
        mp = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if precision == "bf16" else None,
            reduce_dtype=torch.float32,
            # DiT.forward casts its input to the weights' dtype itself; the diffusion maths
            # (noise, x_t, targets) at the root stays fp32.
            cast_forward_inputs=False,
        )
        deferred = MetaBuild(objective) if MetaBuild.applies(objective) else None
        if deferred is None:
            objective.to(self.device)
        parallelize(objective, self.cfg, self.device, mesh=self.mesh, mp_policy=mp)
        if deferred is not None:
            deferred.materialize(self.device)  # allocate this rank's shards and fill them

    def local_parameters(self) -> list[torch.Tensor]:
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


class MetaBuild:
    """An objective whose DiT was built on the meta device, and how to give it its weights.

    Tensors that are not on the meta device (the routing masks, computed on the CPU, and whatever
    the objective built outside the DiT) keep their values across `to_empty`; every meta tensor
    must be a DiT parameter that `DiT.init_plan()` fills, or `materialize` says which is not.
    """

    @staticmethod
    def applies(objective: nn.Module) -> bool:
        return any(p.is_meta for p in objective.parameters())

    def __init__(self, objective: nn.Module):
        """Before sharding: note what to replay and what to keep."""
        self.objective = objective
        # Meta copies (no memory) of the modules whose constructors draw random numbers.
        self.constructor_draws = [copy.deepcopy(m) for m in objective.dit.modules()
                                  if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]
        tensors = [*objective.named_parameters(), *objective.named_buffers()]
        self.kept = {name: t.detach().clone() for name, t in tensors if not t.is_meta}
        self.meta = {name for name, t in tensors if t.is_meta}

    @torch.no_grad()
    def materialize(self, device: torch.device) -> None:
        """After `fully_shard`: allocate the local shards on `device` and fill them."""
        objective = self.objective
        objective.to_empty(device=device)
        for module in self.constructor_draws:
            module.to_empty(device="cpu").reset_parameters()  # same draws as the eager constructor
        tensors = dict([*objective.named_parameters(), *objective.named_buffers()])
        filled = set()
        for name, init in objective.dit.init_plan():
            name = f"dit.{name}"
            full = torch.empty(tensors[name].shape, dtype=tensors[name].dtype)
            init(full)
            _copy_full_into(tensors[name], full)
            filled.add(name)
        for name, value in self.kept.items():
            _copy_full_into(tensors[name], value)
        if self.meta - filled:
            raise RuntimeError(f"built on the meta device but not initialised by DiT.init_plan(): "
                               f"{sorted(self.meta - filled)}")


def _copy_full_into(tensor: torch.Tensor, full: torch.Tensor) -> None:
    """Write the full value `full` into this rank's part of `tensor` (a DTensor shard or a plain,
    replicated tensor)."""
    if not isinstance(tensor, DTensor):
        tensor.copy_(full)
        return
    local = tensor.to_local()
    if local.numel():
        mesh = tensor.device_mesh
        local.copy_(torch.chunk(full, mesh.size(), dim=0)[mesh.get_local_rank()])  # FSDP2's Shard(0)
