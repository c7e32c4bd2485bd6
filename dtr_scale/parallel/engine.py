"""The small interface every parallelism strategy implements (`factory.build_engine` picks one).

The training loop only ever calls these methods, in this order per optimizer step:

    for each micro-batch:
        with engine.accumulate(sync=last_micro_batch):
            loss, per_sample = engine.module(x, t, y, noise, drop)
            engine.backward(loss)
    result = engine.step()            # clip, skip if non-finite, optimizer step, zero grads
    engine.update_ema(decay, result.applied)  # where the parameters live; a no-op if skipped

plus `save`/`save_async`/`load` (the canonical, name-keyed training state that every engine exposes alike
through `state_dict`/`load_state_dict`, see training_state.py, written and resharded by DCP) and
`export_ema` (consolidated weights, rank 0). Engines differ in how they place and wrap the module,
reduce gradients and hold optimizer state; the loop and the checkpoint do not know which one they
run. An engine sees only modules and the optimizer's parameter groups, which the objective
provides (`objective.param_groups`): it knows nothing of the loss or its weighting.

Construction is one template (`Engine.__init__`), torchtitan's order in plain view:

    with Engine.init_context(cfg, env, device):   # meta device / zero.Init under parallel.meta_init
        dit = ...                                  # (built by the caller)
    engine = Engine(objective, cfg, env, device)
        prepare(objective)           place, compile, shard; a deferred build gets its weights here
        make_optimizer(groups)       from objective.param_groups(lr, weight_decay)
        wrap(objective, optimizer)   what the loop calls (autocast, DDP, DeepSpeed)
        LocalEMA(local_parameters()) the average lives where the parameters live
"""
from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.tensor import DTensor

from ..safe_checkpoint_io import dcp_load
from .ema import LocalEMA
from .optim import build_optimizer, set_lr
from .process_group import DistEnv
from . import training_state


@dataclass
class StepResult:
    """Device tensors, so that the loop reads them only when a log line is due."""
    grad_norm: torch.Tensor  # 0-d: global gradient norm before clipping (inf/nan when skipped)
    applied: torch.Tensor  # 0-d bool: False when the optimizer step was skipped (non-finite gradients)


class Engine:
    name = "base"

    def __init__(self, objective: nn.Module, cfg, env: DistEnv, device: torch.device):
        self.objective = objective  # unwrapped: the DiT (`.dit`) and the objective's own parameters
        self.cfg = cfg
        self.env = env
        self.device = device
        self.accum = cfg.train.grad_accum
        self.prepare(objective)
        optimizer = self.make_optimizer(objective.param_groups(cfg.train.lr, cfg.train.weight_decay))
        self.module, self.optimizer = self.wrap(objective, optimizer)  # what the loop calls and steps
        self.ema = LocalEMA(self.local_parameters())

    # -- construction hooks ------------------------------------------------------------------
    @classmethod
    def init_context(cls, cfg, env: DistEnv, device: torch.device) -> ContextManager:
        """Where the caller builds the DiT. Engines that shard may build it deferred under
        `parallel.meta_init` (FSDP2: on the meta device; ZeRO-3: inside zero.Init) and give it
        its weights in `prepare`; the default builds it whole."""
        return contextlib.nullcontext()

    def prepare(self, objective: nn.Module) -> None:
        """Everything before the optimizer: placement, activation checkpointing, compile, sharding."""
        raise NotImplementedError

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        t = self.cfg.train
        return build_optimizer(groups, (t.beta1, t.beta2), self.device)

    def wrap(self, objective: nn.Module, optimizer: torch.optim.Optimizer):
        """(the module the loop calls, the optimizer `step` drives); both unwrapped by default."""
        return objective, optimizer

    # -- per step -----------------------------------------------------------------------------
    def accumulate(self, sync: bool) -> ContextManager:
        """Context around forward+backward of one micro-batch; `sync=False` defers the gradient
        reduction (gradient accumulation)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> StepResult:
        raise NotImplementedError

    def set_lr_factor(self, factor: float) -> None:
        set_lr(self.optimizer, factor)  # every engine keeps its (possibly wrapped) optimizer here

    def update_ema(self, decay: float, applied: torch.Tensor | bool = True) -> None:
        self.ema.update(self.local_parameters(), decay, applied)

    def local_parameters(self) -> list[torch.Tensor]:
        """The DiT's parameters as plain tensors, as this rank holds them: full, the local part
        of DTensor shards, or ZeRO-3 partitions (what the EMA averages)."""
        raise NotImplementedError

    def _gather(self, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Collective: full tensors from `tensors` (laid out like `local_parameters()`), on rank 0."""
        return self._collect(zip((n for n, _ in self.objective.dit.named_parameters()), tensors))

    # -- state -------------------------------------------------------------------------------
    def describe(self) -> str:
        """How the log names this engine, e.g. "deepspeed ZeRO-3" or "fsdp"."""
        return self.name

    def state_dict(self) -> dict:
        """Collective: the canonical training state (see training_state.py) in this engine's
        layout: plain tensors (single, DDP) or DTensor shards (FSDP2), ready for DCP."""
        return training_state.torch_state(self.objective, self.optimizer, self._ema_state())

    def save(self, path: str) -> None:
        """Collective: write the canonical state under `path` (DCP: every rank writes its part)."""
        dcp.save(self.state_dict(), checkpoint_id=path)

    def save_async(self, path: str, process_group=None, stager=None) -> tuple[Future, Future]:
        """Collective: stage the canonical state (a copy in host memory, taken on the stager's
        thread; `stager` keeps the buffers between saves) and write it under `path` from a
        background thread (checkpoint_async.py). Returns two futures: done when the copy is
        complete (the training tensors may change from then on), and DCP's, done when this
        rank's part is written."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType, AsyncSaveResponse

        state = self.state_dict()
        if torch.accelerator.is_available():
            # The copy runs on a side stream: what this stream has queued (the optimizer step, and
            # the gathers and casts of state_dict()) must be done before it reads the tensors.
            torch.accelerator.synchronize()
        result = dcp.async_save(state, checkpoint_id=path, process_group=process_group,
                                async_checkpointer_type=AsyncCheckpointerType.THREAD, async_stager=stager,
                                no_dist=not (dist.is_available() and dist.is_initialized()))
        if isinstance(result, AsyncSaveResponse):
            return result.staging_completion, result.upload_completion
        staged: Future = Future()  # a stager that copies before it returns
        staged.set_result(None)
        return staged, result

    def load(self, path: str) -> None:
        """Collective: read a state that any engine on any world size saved, resharded by DCP."""
        state = self.state_template()
        dcp_load(state, path)  # the index and non-tensor entries are read without running code
        self.load_state_dict(state)

    def state_template(self) -> dict:
        """What DCP loads into: structured and laid out like `state_dict()`; values may be stale."""
        return self.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Collective: adopt a `state_dict()`-shaped structure that DCP has filled."""
        training_state.load_torch_state(self.objective, self.optimizer, state)
        self._load_ema(state["ema"])

    def _ema_state(self) -> dict[str, torch.Tensor]:
        return dict(zip(dit_names(self.objective), self.ema.shadow))

    def _load_ema(self, loaded: dict[str, torch.Tensor]) -> None:
        for name, shadow in zip(dit_names(self.objective), self.ema.shadow):
            value = loaded[name]
            value = value.to_local() if isinstance(value, DTensor) else value
            if shadow.data_ptr() != value.data_ptr():  # DCP may have filled the shadow in place
                shadow.copy_(value)

    def export_ema(self) -> dict[str, torch.Tensor] | None:
        """Collective: consolidated EMA weights of the DiT (official names, fp32, CPU) on rank 0,
        None on the other ranks."""
        return self._gather(self.ema.shadow)

    def export_model(self) -> dict[str, torch.Tensor] | None:
        """Collective: consolidated raw (non-EMA) weights, like `export_ema`."""
        return self._gather(self.local_parameters())

    def _collect(self, pairs) -> dict[str, torch.Tensor] | None:
        """Rank 0 keeps (name, full tensor) pairs as fp32 CPU copies, plus the DiT's buffers.

        `pairs` is consumed on every rank, since producing a full tensor may be a collective.
        """
        out = {}
        for name, full in pairs:
            if self.env.rank == 0:
                out[name] = full.detach().float().cpu().clone()
        if self.env.rank != 0:
            return None
        for name, buf in self.objective.dit.named_buffers():
            out[name] = buf.detach().cpu().clone()
        return out

    def memory_stats(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return {"peak_mem_gb": torch.cuda.max_memory_allocated(self.device) / 2**30}
        import resource  # CPU: the process's peak resident set (kB on Linux)

        return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def dit_names(objective: nn.Module) -> list[str]:
    return [name for name, _ in objective.dit.named_parameters()]
