"""Build a large model without holding it whole on any rank (`parallel.meta_init: true`).

FSDP2: the objective is built on the meta device (shapes only), sharded by `parallelize`, then
materialised shard by shard. ZeRO-3: it is built inside `deepspeed.zero.Init`, which partitions
each submodule as soon as it exists, and the weights are then set one gathered parameter at a time.

The weights equal the eager init's for the same seed. Random initialisation cannot be split by
shard (each rank would need the generator's state in the middle of a tensor), so every rank
replays the eager init's random draws in the same order with the same global generator, on the
CPU, one FULL parameter at a time, and keeps only its own shard: the peak extra memory is the
largest single parameter (DiT-XL/2: 32 MiB), not the model. The replay has two parts, as the eager
build does: the modules' constructor inits (`reset_parameters`, overwritten later but drawing
random numbers) and `DiT.init_plan()`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.routing import TaskRouter


def meta_init_wanted(cfg) -> bool:
    p = cfg.parallel
    return p.meta_init and (p.engine == "fsdp" or (p.engine == "deepspeed" and p.zero_stage == 3))


def build_objective_for_engine(cfg, make_objective, world_size: int, device: torch.device) -> nn.Module:
    """`make_objective()` on `device`, or deferred (meta device for FSDP2, zero.Init for ZeRO-3)
    when `parallel.meta_init` applies; the engine then finishes it (`objective.deferred_init`)."""
    if not meta_init_wanted(cfg):
        return make_objective().to(device)
    if cfg.parallel.engine == "fsdp":
        with torch.device("meta"):
            objective = make_objective()
        objective.deferred_init = "meta"
        # Meta copies of the modules whose constructors draw random numbers (no memory).
        objective.constructor_draws = [copy.deepcopy(m) for m in _drawing_modules(objective.dit)]
        return objective
    import deepspeed

    from .deepspeed_engine import deepspeed_config

    config = deepspeed_config(cfg, world_size, device.type == "cuda")
    deepspeed.init_distributed(dist_init_required=False)  # zero.Init reads the world size from it
    with deepspeed.zero.Init(config_dict_or_path=config, remote_device=None, enabled=True):
        objective = make_objective()  # constructors draw as in eager; DiT skips its own init
    objective.deferred_init = "zero3"
    return objective


def _drawing_modules(dit: nn.Module) -> list[nn.Module]:
    return [m for m in dit.modules() if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]


@torch.no_grad()
def materialize_fsdp(objective: nn.Module, device: torch.device) -> None:
    """After `fully_shard`: allocate the local shards on `device` and fill them."""
    objective.to_empty(device=device)
    for module in objective.__dict__.pop("constructor_draws"):
        module.to_empty(device="cpu").reset_parameters()  # same draws as the eager constructor
    params = dict(objective.dit.named_parameters())
    for name, init in objective.dit.init_plan():
        param = params[name]
        full = torch.empty(param.shape, dtype=param.dtype)
        init(full)
        local = param.to_local()
        if local.numel():
            mesh = param.device_mesh
            local.copy_(torch.chunk(full, mesh.size(), dim=0)[mesh.get_local_rank()])  # FSDP2's Shard(0)
    _rebuild_buffers(objective, device)


def initialize_zero3(objective: nn.Module) -> None:
    """Set the partitioned weights, gathering one parameter at a time."""
    import deepspeed

    params = dict(objective.dit.named_parameters())
    for name, init in objective.dit.init_plan():
        with deepspeed.zero.GatheredParameters([params[name]], modifier_rank=0):
            init(params[name].data)


def _rebuild_buffers(objective: nn.Module, device: torch.device) -> None:
    """Buffers are not sharded and not random: recompute them (the routing masks), and the
    ANT-UW log-variances, which start at zero."""
    dit = objective.dit
    if dit.router is not None:
        dit.router.masks = TaskRouter(dit.routing, dit.hidden_size, dit.depth).masks.to(device)
    if objective.weighting is not None:
        objective.weighting.log_vars.to_local().zero_()
