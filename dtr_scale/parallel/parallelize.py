"""How every engine prepares the model, in one fixed order: activation checkpointing, then
torch.compile, then FSDP2 sharding.

The order matters. Checkpointing goes innermost, so that the compiler sees the recomputation
region and can plan around it; compilation goes before sharding, so that FSDP2's per-block hooks
stay outside the compiled graphs (each block is still one FSDP unit, gathered right before its
compiled forward runs). Compilation is regional: each DiT block is compiled on its own, and the
blocks share one graph because they run the same code, so compile time does not grow with depth.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("dtr_scale")


def compile_wanted(setting: str, device: torch.device) -> bool:
    """`model.compile`: true | false | auto (on for CUDA, where it pays; off on the CPU, where
    compilation takes longer than short runs gain)."""
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"model.compile: got {setting!r}; allowed: auto, true, false")
    return device.type == "cuda" if setting == "auto" else setting == "true"


def apply_activation_checkpointing(dit: nn.Module, fraction: float) -> None:
    dit.set_checkpointing(fraction)


def apply_compile(dit: nn.Module, backend: str = "inductor") -> None:
    """Compile each DiT block in place (`Module.compile` keeps the official parameter names)."""
    torch._logging.set_logs(recompiles=True)  # a recompile names its cause in the log
    for block in dit.blocks:
        block.compile(backend=backend)
    dit.dynamic_batch = True


def apply_fsdp(objective: nn.Module, mesh, mp_policy) -> None:
    """FSDP2: each DiT block is one unit (gathered just in time), the rest belongs to the root."""
    from torch.distributed.fsdp import fully_shard

    for block in objective.dit.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp_policy)
    fully_shard(objective, mesh=mesh, mp_policy=mp_policy)


def parallelize(objective: nn.Module, cfg, device: torch.device, mesh=None, mp_policy=None) -> nn.Module:
    """Apply the wrappers in their fixed order; sharding only when the engine passes a mesh."""
    apply_activation_checkpointing(objective.dit, cfg.model.checkpointing)
    if compile_wanted(cfg.model.compile, device):
        apply_compile(objective.dit)
    if mesh is not None:
        apply_fsdp(objective, mesh, mp_policy)
    return objective


class CompileWatch:
    """Compilation seen since the last report: seconds spent and frames compiled.

    torch.compile works lazily inside the first steps, so its cost shows up in the first log
    line after it. A frame compiled after the first report is a recompilation (a new shape or
    mode); it is logged as a warning since a recompile per step would erase the gain.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.reports = 0
        self._seconds, self._frames = self._totals()

    @staticmethod
    def _totals() -> tuple[float, int]:
        from torch._dynamo.utils import calculate_time_spent, counters

        spent = calculate_time_spent()
        seconds = spent.get("entire_frame_compile", 0.0) + spent.get("entire_backward_compile", 0.0)
        return seconds, counters["frames"]["ok"]

    def report(self) -> dict[str, float]:
        """{"compile_s", "compiled_frames"} since the previous report; {} when compile is off."""
        if not self.enabled:
            return {}
        seconds, frames = self._totals()
        new_seconds, new_frames = seconds - self._seconds, frames - self._frames
        self._seconds, self._frames = seconds, frames
        if new_frames and self.reports:
            log.warning("torch.compile compiled %d more frame(s) (%.1f s) after the first log line: "
                        "a recompilation (see the 'recompiles' log for its cause)", new_frames, new_seconds)
        self.reports += 1
        return {"compile_s": round(new_seconds, 3), "compiled_frames": new_frames}

