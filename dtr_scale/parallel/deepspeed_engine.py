"""DeepSpeed engine: ZeRO stage 1/2/3 (optional CPU offload), configured from our YAML.

The DeepSpeed JSON is generated from the config (batch sizes, accumulation, clipping, precision,
ZeRO stage); `parallel.deepspeed_config` names a JSON file whose keys override it. On the CPU the
optimizer is torch's AdamW (DeepSpeed's own optimizers JIT-compile C++ for ~90 s); on CUDA it is
DeepSpeed's FusedAdam. DeepSpeed skips steps with non-finite gradient norms in every stage
(`was_step_applied`), which is how this engine reports skipped steps.
"""
from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from .deepspeed_ops import announce_cpu_op_build
from .engine import Engine, StepResult
from .ema import LocalEMA
from .optim import build_optimizer, param_groups
from .meta_init import initialize_zero3
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

    def __init__(self, objective, cfg, env, device):
        super().__init__(objective, cfg, env, device)
        import deepspeed

        t = cfg.train
        self.stage = cfg.parallel.zero_stage
        self.accum = t.grad_accum
        self.micro = 0
        parallelize(objective, cfg, device)
        if getattr(objective, "deferred_init", None) == "zero3":
            initialize_zero3(objective)  # built under zero.Init: set the partitioned weights
        groups = param_groups(objective, t.lr, t.weight_decay, cfg.diffusion.ant_lr)
        if device.type == "cuda" and not cfg.parallel.offload:
            from deepspeed.ops.adam import FusedAdam

            optimizer = FusedAdam(groups, lr=t.lr, betas=(t.beta1, t.beta2), adam_w_mode=True)
        else:
            optimizer = build_optimizer(groups, (t.beta1, t.beta2), device)
        self.config = deepspeed_config(cfg, env.world_size, device.type == "cuda")
        announce_cpu_op_build(device, env.rank)  # initialize() may compile a C++ op silently
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            model=objective, optimizer=optimizer, config=self.config, dist_init_required=False
        )
        self.module = self.ds
        self.ema = LocalEMA(self._local_dit())

    def _local_dit(self) -> list[torch.Tensor]:
        # ZeRO-3 keeps each rank's flat partition in `ds_tensor`; stages 1-2 replicate parameters.
        params = list(self.objective.dit.parameters())
        return [p.ds_tensor for p in params] if self.stage == 3 else params

    def backward(self, loss):
        self.ds.backward(loss)  # DeepSpeed divides by the accumulation steps itself
        self.micro += 1
        if self.micro % self.accum:
            self.ds.step()  # not a boundary: DeepSpeed only advances its micro-step counter

    def step(self):
        self.ds.step()
        applied = bool(self.ds.was_step_applied())
        norm = self.ds.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        return StepResult(norm if applied else float("nan"), applied)

    def _ema_file(self, path: str) -> str | None:
        if self.stage == 3:
            return os.path.join(path, f"ema_rank{self.env.rank:05d}.pt")
        return os.path.join(path, "ema.pt") if self.env.rank == 0 else None

    def save(self, path):
        self.ds.save_checkpoint(path, tag="engine", save_latest=False)
        target = self._ema_file(path)
        if target:
            torch.save(self.ema.state_dict(), target)

    def load(self, path):
        loaded, _ = self.ds.load_checkpoint(path, tag="engine", load_optimizer_states=True,
                                            load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}/engine")
        target = self._ema_file(path) or os.path.join(path, "ema.pt")
        self.ema.load_state_dict(torch.load(target, map_location=self.device, weights_only=True))

    def _gather(self, tensors) -> dict[str, torch.Tensor] | None:
        def full_tensors():
            for (name, p), local in zip(self.objective.dit.named_parameters(), tensors):
                if self.stage != 3:
                    yield name, local
                    continue
                parts = [torch.empty_like(local) for _ in range(self.env.world_size)]
                dist.all_gather(parts, local.contiguous())
                yield name, torch.cat(parts)[: p.ds_numel].view(p.ds_shape)

        return self._collect(full_tensors())
