"""The canonical training state (training_state.py) of a DeepSpeed ZeRO-1/2/3 engine, read and
written through DeepSpeed's public per-parameter accessors (`deepspeed.utils.safe_get_full_*`,
`safe_set_full_*`), never through its checkpoint files.

Every value is a full tensor on every rank (each accessor is a collective that assembles it from
the partitions); DCP then writes each tensor once. On load every rank reads the full tensors and
the setters keep only the partition the rank owns. The "model" entry holds the fp32 master
weights, which is what the optimizer continues from; the module's own (possibly bf16) copy is
rebuilt from them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)

from .training_state import MOMENT_KEYS, apply_groups, canonical_groups


def full_shape(p: torch.nn.Parameter) -> torch.Size:
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape  # ZeRO-3 empties p itself


def gather_partition(local: torch.Tensor, p: torch.nn.Parameter) -> torch.Tensor:
    """Collective: the full tensor of which each rank holds the padded flat ZeRO-3 partition `local`."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)[: p.ds_numel].view(p.ds_shape)


def own_partition(full: torch.Tensor, p: torch.nn.Parameter) -> torch.Tensor:
    """This rank's padded flat ZeRO-3 partition of the full tensor `full`."""
    size = p.ds_tensor.numel()
    flat = full.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros(size * dist.get_world_size() - flat.numel())])
    return flat.narrow(0, size * dist.get_rank(), size)


def group_param_names(objective, groups: list[dict]) -> list[list[str]]:
    """Each param group's parameter names; read before `deepspeed.initialize`, which replaces the
    groups' parameters by its flat partitions."""
    name_of = {id(p): n for n, p in objective.named_parameters()}
    return [[name_of[id(p)] for p in g["params"]] for g in groups]


class DeepSpeedState:
    """Reads and writes the canonical state of one DeepSpeed engine.

    `inner` is the torch optimizer handed to `deepspeed.initialize`; ZeRO points its param groups
    at the flat fp32 partitions, so its per-group `step` counters are the ones Adam uses.
    """

    def __init__(self, engine, objective, inner: torch.optim.Optimizer, group_names: list[list[str]], stage: int):
        self.ds, self.objective, self.inner, self.stage = engine, objective, inner, stage
        self.group_names = group_names
        self.trained = {n for names in self.group_names for n in names}

    # -- read ----------------------------------------------------------------------------------
    def full_module_value(self, p) -> torch.Tensor:
        """Collective for ZeRO-3: the module's own value of a parameter (no fp32 master)."""
        return gather_partition(p.ds_tensor, p) if self.stage == 3 else p.detach()

    def master(self, name: str, p) -> torch.Tensor:
        """Collective: the fp32 master weight (the module value for parameters nobody trains)."""
        value = safe_get_full_fp32_param(p) if name in self.trained else None
        return (self.full_module_value(p) if value is None else value).float()

    def state_dict(self, ema_full: dict[str, torch.Tensor]) -> dict:
        self.ensure_optimizer_state()
        model = {n: self.master(n, p) for n, p in self.objective.named_parameters()}
        model.update({n: b.detach() for n, b in self.objective.named_buffers()})
        step = self._step()
        optim_state = {}
        for n, p in self.objective.named_parameters():
            if n in self.trained:
                moments = {k: safe_get_full_optimizer_state(p, k).float() for k in MOMENT_KEYS}
                optim_state[n] = {**moments, "step": step.clone()}
        groups = canonical_groups(self.inner.param_groups, self.group_names)
        return {"model": model, "optim": {"state": optim_state, "param_groups": groups}, "ema": ema_full}

    def template(self, ema_names: list[str]) -> dict:
        """Empty tensors shaped like `state_dict()` (no collectives), for DCP to fill."""
        self.ensure_optimizer_state()
        params = dict(self.objective.named_parameters())
        model = {n: torch.empty(full_shape(p)) for n, p in params.items()}
        model.update({n: torch.empty_like(b) for n, b in self.objective.named_buffers()})
        optim_state = {n: {**{k: torch.empty(full_shape(params[n])) for k in MOMENT_KEYS},
                           "step": torch.zeros(())} for n in params if n in self.trained}
        groups = canonical_groups(self.inner.param_groups, self.group_names)
        ema = {n: torch.empty(full_shape(params["dit." + n])) for n in ema_names}
        return {"model": model, "optim": {"state": optim_state, "param_groups": groups}, "ema": ema}

    # -- write ---------------------------------------------------------------------------------
    @torch.no_grad()
    def load(self, state: dict) -> None:
        self.ensure_optimizer_state()
        model, optim = state["model"], state["optim"]
        for n, p in self.objective.named_parameters():
            value = model[n].to(p.device)
            if n in self.trained:
                safe_set_full_fp32_param(p, value)
                for k in MOMENT_KEYS:
                    safe_set_full_optimizer_state(p, optim["state"][n][k].to(p.device), k)
            # the module's working copy (bf16 under bf16) follows the master, as after a step
            target = p.ds_tensor if self.stage == 3 else p.data
            target.copy_(own_partition(value, p) if self.stage == 3 else value)
        for n, b in self.objective.named_buffers():
            b.copy_(model[n])
        steps = {float(s["step"]) for s in optim["state"].values()}
        if len(steps) > 1:
            raise ValueError(f"checkpoint parameters are at different optimizer steps {sorted(steps)}; "
                             "DeepSpeed keeps one step counter per parameter group")
        step = steps.pop() if steps else 0.0
        for s in self.inner.state.values():
            if "step" in s:  # a tensor in torch's Adam, an int in DeepSpeed's FusedAdam
                s["step"] = s["step"].fill_(step) if torch.is_tensor(s["step"]) else int(step)
        apply_groups(self.inner.param_groups, optim["param_groups"])

    # -- helpers -------------------------------------------------------------------------------
    def _step(self) -> torch.Tensor:
        steps = {float(s["step"]) for s in self.inner.state.values() if "step" in s}
        if len(steps) != 1:
            raise RuntimeError(f"DeepSpeed's optimizer partitions disagree on the step: {sorted(steps)}")
        return torch.tensor(steps.pop(), dtype=torch.float32)

    def _flat_partitions(self) -> list[torch.Tensor]:
        """The fp32 tensors Adam steps: ZeRO-1/2 leave them in the param groups; ZeRO-3 puts each
        into its group only for the duration of its step, and lists them here."""
        zero3 = getattr(self.ds.optimizer, "fp32_partitioned_groups_flat", None)
        return list(zero3) if zero3 is not None else [p for g in self.inner.param_groups for p in g["params"]]

    def ensure_optimizer_state(self) -> None:
        """Adam creates its moments lazily on its first step, and ZeRO-1/2 link each parameter's
        fragment of them right after stepping the FIRST param group, when the other groups have
        no state yet: their moments would never be reachable through the accessors. So create
        them up front exactly as Adam would (zeros, step 0) and link them now; Adam then updates
        these very tensors in place."""
        flats = self._flat_partitions()
        if all(p in self.inner.state for p in flats):
            return
        torch_adam = isinstance(self.inner, torch.optim.Optimizer) and type(self.inner).__module__.startswith("torch.")
        for p in flats:
            step = torch.zeros((), dtype=torch.float32, device=p.device) if torch_adam else 0
            self.inner.state[p] = {"step": step, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        link = getattr(self.ds.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:  # ZeRO-1/2 and DeepSpeed's bf16 optimizer; ZeRO-3 reads the state directly
            link()
