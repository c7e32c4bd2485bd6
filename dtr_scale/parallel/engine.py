"""The small interface every parallelism strategy implements (`factory.build_engine` picks one).

The training loop only ever calls these methods, in this order per optimizer step:

    for each micro-batch:
        with engine.accumulate(sync=last_micro_batch):
            loss, per_sample = engine.module(x, t, y, noise)
            engine.backward(loss)
    result = engine.step()            # clip, skip if non-finite, optimizer step, zero grads
    engine.update_ema(decay, result.applied)  # where the parameters live; a no-op if skipped

plus `save`/`load` (the canonical, name-keyed training state that every engine exposes alike
through `state_dict`/`load_state_dict`, see training_state.py, written and resharded by DCP) and
`export_ema` (consolidated weights, rank 0). Engines
differ in how they wrap the module, reduce gradients and hold optimizer state; the loop and the
checkpoint do not know which one they run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.tensor import DTensor

from ..safe_checkpoint_io import dcp_load
from .optim import set_lr
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
        self.objective = objective  # unwrapped: DiT (`.dit`) + loss-weighting parameters
        self.cfg = cfg
        self.env = env
        self.device = device
        self.module: nn.Module = objective  # what the loop calls; engines replace it with a wrapper

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
        self.ema.update(self._local_dit(), decay, applied)

    def _local_dit(self) -> list[torch.Tensor]:
        """The DiT's parameters as this rank holds them: full, DTensor shards or ZeRO-3 partitions."""
        raise NotImplementedError

    def _gather(self, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Collective: full tensors from `tensors` (laid out like `_local_dit()`), on rank 0."""
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
        return self._gather(self._local_dit())

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
