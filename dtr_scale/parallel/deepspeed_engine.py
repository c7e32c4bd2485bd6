"""DeepSpeed engine: ZeRO stage 1/2/3 (optional CPU offload), configured from our YAML.

The DeepSpeed JSON is generated from the config (batch sizes, accumulation, clipping, precision,
ZeRO stage); `parallel.deepspeed_config` names a JSON file whose keys override it. On the CPU the
optimizer is torch's AdamW (DeepSpeed's own optimizers JIT-compile C++ for ~90 s); on CUDA it is
DeepSpeed's FusedAdam. DeepSpeed skips steps with non-finite gradient norms in every stage
(`was_step_applied`), which is how this engine reports skipped steps. Checkpoints hold the
canonical state read through DeepSpeed's public accessors (deepspeed_state.py), not its own files.

`parallel.meta_init: true` with ZeRO-3 builds a large DiT without holding it whole on any rank:
the caller builds it inside `deepspeed.zero.Init` (`init_context`), which partitions each
submodule as soon as it exists (the modules' constructor inits run as in eager, so the random
draws match; the DiT sees parameters without values and skips its own init), and `prepare` then
sets the weights from `DiT.init_plan()`, gathering one parameter at a time.
"""
from __future__ import annotations

import contextlib
import json
import os

import torch
from deepspeed.runtime.zero.partition_parameters import is_zero_param
from deepspeed.utils import safe_get_full_fp32_param, safe_get_local_fp32_param

from .deepspeed_ops import announce_cpu_op_build
from .deepspeed_state import DeepSpeedState, gather_partition, group_param_names, own_partition
from .engine import Engine, StepResult, dit_names
from .parallelize import parallelize


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(cfg, world_size: int, on_cuda: bool) -> dict:
    t, p = cfg.train, cfg.parallel
    zero: dict = {
        "stage": p.zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": on_cuda,  # overlapping needs CUDA streams
        "reduce_bucket_size": 5e7,
    }
    if p.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_cuda}
        if p.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_cuda}
    config = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.global_batch_size // (world_size * t.grad_accum),
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": float(t.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # our own logger reports
        "wall_clock_breakdown": False,
    }
    if p.deepspeed_config:
        if not os.path.isfile(p.deepspeed_config):
            raise FileNotFoundError(f"parallel.deepspeed_config: file not found: {p.deepspeed_config}")
        with open(p.deepspeed_config) as f:
            config = merge(config, json.load(f))
    return config


class DeepSpeedEngine(Engine):
    name = "deepspeed"

    @classmethod
    def init_context(cls, cfg, env, device):
        """ZeRO-3 under `parallel.meta_init`: build inside zero.Init (partitioned as it is built)."""
        if not (cfg.parallel.meta_init and cfg.parallel.zero_stage == 3):
            return contextlib.nullcontext()
        import deepspeed

        deepspeed.init_distributed(dist_init_required=False)  # zero.Init reads the world size from it
        config = deepspeed_config(cfg, env.world_size, device.type == "cuda")
        return deepspeed.zero.Init(config_dict_or_path=config, remote_device=None, enabled=True)

    def prepare(self, objective):
        self.stage = self.cfg.parallel.zero_stage
        self.micro = 0
        # fp32: the module's parameters are the master weights; bf16/fp16: a rounded copy of them.
        self.params_are_master = self.cfg.train.precision == "fp32"
        partitioned = any(is_zero_param(p) for p in objective.dit.parameters())  # built under zero.Init
        if not partitioned:
            objective.to(self.device)
        parallelize(objective, self.cfg, self.device)
        if partitioned:
            init_partitioned(objective.dit)

    def make_optimizer(self, groups):
        t = self.cfg.train
        if self.device.type == "cuda" and not self.cfg.parallel.offload:
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(groups, lr=t.lr, betas=(t.beta1, t.beta2), adam_w_mode=True)
        return super().make_optimizer(groups)

    def wrap(self, objective, optimizer):
        import deepspeed

        names = group_param_names(objective, optimizer.param_groups)
        self.config = deepspeed_config(self.cfg, self.env.world_size, self.device.type == "cuda")
        announce_cpu_op_build(self.device, self.env.rank)  # initialize() may compile a C++ op silently
        self.ds, wrapped, _, _ = deepspeed.initialize(
            model=objective, optimizer=optimizer, config=self.config, dist_init_required=False
        )
        self.canonical = DeepSpeedState(self.ds, objective, optimizer, names, self.stage)
        self.canonical.ensure_optimizer_state()
        return self.ds, wrapped

    def describe(self) -> str:
        return f"deepspeed ZeRO-{self.stage}"

    def local_parameters(self) -> list[torch.Tensor]:
        """What the EMA averages: the fp32 master weights. Under fp32 the module's parameters are
        those values bit for bit (ZeRO-1/2 replicate them, ZeRO-3 keeps each rank's flat partition
        in `ds_tensor`); under bf16/fp16 the module holds a rounded copy, so the EMA reads the
        master through DeepSpeed's accessors (ZeRO-3: the rank's own partition, no communication)."""
        params = list(self.objective.dit.parameters())
        if self.params_are_master:
            return [p.ds_tensor for p in params] if self.stage == 3 else params
        if self.stage == 3:
            return [safe_get_local_fp32_param(p) if p.requires_grad else p.ds_tensor for p in params]
        return [safe_get_full_fp32_param(p) if p.requires_grad else p for p in params]

    def backward(self, loss):
        self.ds.backward(loss)  # DeepSpeed divides by the accumulation steps itself
        self.micro += 1
        if self.micro % self.accum:
            self.ds.step()  # not a boundary: DeepSpeed only advances its micro-step counter

    def step(self):
        # DeepSpeed decides the skip itself and reports it as a Python bool (its overflow check
        # may read the device): the one engine whose step can synchronise with the host.
        self.ds.step()
        applied = bool(self.ds.was_step_applied())
        norm = self.ds.get_global_grad_norm()
        if isinstance(norm, torch.Tensor) and applied:
            norm = norm.detach().reshape(()).to(self.device, torch.float32)
        else:
            norm = torch.full((), float(norm) if applied and norm is not None else float("nan"), device=self.device)
        return StepResult(norm, torch.full((), applied, dtype=torch.bool, device=self.device))

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.canonical.state_dict(self._full_ema())

    def state_template(self) -> dict:
        return self.canonical.template(dit_names(self.objective))

    def load_state_dict(self, state: dict) -> None:
        self.canonical.load(state)
        for (name, p), shadow in zip(self.objective.dit.named_parameters(), self.ema.shadow):
            full = state["ema"][name]
            shadow.copy_(own_partition(full, p) if self.stage == 3 else full)

    def _full_ema(self) -> dict[str, torch.Tensor]:
        return dict(self._full_tensors(self.ema.shadow))

    def _full_tensors(self, tensors):
        """Collective: (name, full tensor) from tensors laid out like `local_parameters()`."""
        for (name, p), local in zip(self.objective.dit.named_parameters(), tensors):
            yield name, gather_partition(local, p) if self.stage == 3 else local

    def _gather(self, tensors) -> dict[str, torch.Tensor] | None:
        return self._collect(self._full_tensors(tensors))


def init_partitioned(dit: torch.nn.Module) -> None:
    """Set the weights of a DiT built under zero.Init, gathering one parameter at a time."""
    import deepspeed

    params = dict(dit.named_parameters())
    for name, init in dit.init_plan():
        with deepspeed.zero.GatheredParameters([params[name]], modifier_rank=0):
            init(params[name].data)
