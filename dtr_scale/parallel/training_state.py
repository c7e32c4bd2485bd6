"""The canonical training state: one name-keyed structure that every engine produces and adopts.

    {"model": {objective name: parameter or buffer},          # fp32 master values
     "ema":   {DiT parameter name: EMA tensor},
     "optim": {"state": {objective name: {"exp_avg", "exp_avg_sq", "step"}},
               "param_groups": [{"lr", "betas", "eps", "weight_decay", "base_lr"}]}}  # float64 tensors

Names are those of `objective.named_parameters()` ("dit.blocks.0.attn.qkv.weight", the objective's
own learned parameters outside the DiT, the buffer "dit.router.masks"); the EMA uses the DiT's own names, which is
what export writes. Values are plain full tensors (single, DDP, DeepSpeed) or DTensor shards
(FSDP2). PyTorch distributed checkpoint (DCP) writes them by name and global shape, so a state
saved by any engine on any world size loads into any other: DCP reshards on read.

The param groups keep only the hyper-parameters every engine's optimizer has, so the saved
structure is the same whichever optimizer class (torch AdamW, DeepSpeed FusedAdam) ran. They are
float64 tensors (Python floats exactly), never Python objects: DCP pickles non-tensor entries, and
a checkpoint must hold nothing that needs unpickling (see safe_checkpoint_io.py). Checkpoints of
earlier versions hold them as plain floats (and the group's parameter names); those still load.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "base_lr")
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


def canonical_groups(groups: list[dict], names: list[list[str]] | None = None) -> list[dict]:
    """Param groups reduced to GROUP_KEYS, as float64 tensors. Which parameters a group holds
    follows from the model and the config (the fingerprint checks both), so it is not saved;
    `names` is accepted for the engines that know them (DeepSpeed) and unused."""
    del names
    return [{k: torch.tensor([float(v) for v in g[k]] if k == "betas" else float(g[k]), dtype=torch.float64)
             for k in GROUP_KEYS} for g in groups]


def _plain(value) -> float | list[float]:
    """A saved hyper-parameter: a tensor (this version) or a float/list (earlier checkpoints)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)


def apply_groups(groups: list[dict], loaded: list[dict]) -> None:
    """Copy the saved hyper-parameters into an optimizer's (or a state dict's) param groups."""
    if len(groups) != len(loaded):
        raise ValueError(f"checkpoint has {len(loaded)} optimizer param groups, this run {len(groups)}")
    for g, saved in zip(groups, loaded):
        for k in GROUP_KEYS:
            g[k] = tuple(_plain(saved[k])) if k == "betas" else _plain(saved[k])


def torch_state(objective: nn.Module, optimizer: torch.optim.Optimizer, ema: dict) -> dict:
    """The canonical state of an engine whose optimizer is a torch optimizer over `objective`'s
    parameters (single, DDP, FSDP2): torch's name-keyed state-dict helpers do the work."""
    optim = get_optimizer_state_dict(objective, optimizer)
    return {
        "model": get_model_state_dict(objective),
        "optim": {"state": optim["state"], "param_groups": canonical_groups(optim["param_groups"])},
        "ema": ema,
    }


def load_torch_state(objective: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_model_state_dict(objective, state["model"])
    full = get_optimizer_state_dict(objective, optimizer)  # every key torch's optimizer needs
    apply_groups(full["param_groups"], state["optim"]["param_groups"])
    set_optimizer_state_dict(objective, optimizer, {"state": state["optim"]["state"],
                                                    "param_groups": full["param_groups"]})
