"""Denoising Task Routing (DTR) masks.

Each diffusion timestep t (a "task", 0..T-1, T-1 = pure noise) owns a binary mask over the C
hidden channels of every DiT block. Inside a block only the masked channels go through attention
and MLP; the others skip the block unchanged (see `DiTBlock.forward`).

`init="dtr"` is the paper's sliding window: k = int(C·β) active channels starting at
s_t = round((t/(T-1))^α · (C-k)), the same mask in every block, so one T×C table serves the whole
model. `init="random"` (R-TR) picks k random channels per task and per block from a seeded
generator, so it is reproducible (the reference implementation is not).

The tables are a persistent uint8 buffer `router.masks` of shape (G, T, C), G = 1 for the shared
DTR window and G = depth for per-block masks, so that masks adopted from an official DTR checkpoint
survive our own checkpoints. uint8 rather than float: 4x smaller, untouched by `.half()` /
`.bfloat16()` casts of the module, and broadcastable by gloo/NCCL.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

ROUTING_INITS = ("dtr", "random")


@dataclass
class RoutingConfig:
    sharing_ratio: float = 0.8  # β: fraction of channels active per task
    init: str = "dtr"  # "dtr" (sliding window) | "random" (R-TR)
    alpha: float = 4.0  # window exponent α
    num_tasks: int = 1000  # T: one task per training timestep
    seed: int = 0  # only used by init="random"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "RoutingConfig":
        """Range checks; the messages name the key as the training config spells it, since this
        class is also that config's `model.routing` section."""
        def bad(key, allowed):
            raise ValueError(f"model.routing.{key}: got {getattr(self, key)!r}; {allowed}")

        if not 0.0 < float(self.sharing_ratio) <= 1.0:
            bad("sharing_ratio", "must be in (0, 1] (1.0 = plain DiT)")
        if self.init not in ROUTING_INITS:
            bad("init", f"allowed: {', '.join(ROUTING_INITS)}")
        if self.num_tasks < 1:
            bad("num_tasks", "must be >= 1")
        if self.alpha <= 0:
            bad("alpha", "must be > 0")
        return self

    @property
    def is_identity(self) -> bool:
        """β = 1 routes every channel for every task: plain DiT, no masking at all."""
        return float(self.sharing_ratio) >= 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def active_channels(hidden_size: int, sharing_ratio: float) -> int:
    """k = int(C·β): truncation, as in the reference."""
    return int(hidden_size * sharing_ratio)


def window_starts(num_tasks: int, hidden_size: int, sharing_ratio: float, alpha: float) -> np.ndarray:
    """s_t = round((t/(T-1))^α · (C-k)) with numpy's round-half-even, as int64."""
    k = active_channels(hidden_size, sharing_ratio)
    return ((np.linspace(0.0, 1.0, num_tasks) ** alpha) * (hidden_size - k)).round().astype(np.int64)


def dtr_mask_table(num_tasks: int, hidden_size: int, sharing_ratio: float, alpha: float) -> torch.Tensor:
    """(T, C) uint8 table of sliding-window masks."""
    k = active_channels(hidden_size, sharing_ratio)
    starts = torch.from_numpy(window_starts(num_tasks, hidden_size, sharing_ratio, alpha))
    channel = torch.arange(hidden_size, device=starts.device)  # CPU, even under a meta-device build
    table = (channel[None, :] >= starts[:, None]) & (channel[None, :] < starts[:, None] + k)
    return table.to(torch.uint8)


def random_mask_tables(
    depth: int, num_tasks: int, hidden_size: int, sharing_ratio: float, seed: int
) -> torch.Tensor:
    """(depth, T, C) uint8: each block and task gets its own k random channels, from `seed`."""
    k = active_channels(hidden_size, sharing_ratio)
    gen = torch.Generator().manual_seed(int(seed))
    # On the CPU, like the generator, even when the model is built on the meta device.
    scores = torch.rand(depth, num_tasks, hidden_size, generator=gen, device="cpu")
    chosen = scores.argsort(dim=-1)[..., :k]
    tables = torch.zeros(depth, num_tasks, hidden_size, dtype=torch.uint8, device="cpu")
    tables.scatter_(-1, chosen, 1)
    return tables


def task_index_from_continuous(t: torch.Tensor, num_tasks: int = 1000) -> torch.Tensor:
    """Task index of continuous time t ∈ [0, 1] (flow matching; t = 0 is pure noise, t = 1 data).

    task(t) = round((1 − t)·(T − 1)) with torch.round (half to even), so the noisiest time gets
    the last task exactly as DDPM's t = T−1 does: t = 0 → T−1, t = 1 → 0, and with T = 1000
    t = 0.5 → round(499.5) = 500.
    """
    return torch.round((1 - t.float().clamp(0, 1)) * (num_tasks - 1)).long()


TIME_INPUTS = ("discrete", "continuous")


class TaskRouter(nn.Module):
    """Holds the mask tables of a routed DiT and turns timesteps into per-sample masks.

    Called once per model forward: one gather from the table gives the (G, N, 1, C) masks
    every block uses, so blocks never look up anything themselves and no global state is set.
    """

    def __init__(self, config: RoutingConfig, hidden_size: int, depth: int):
        super().__init__()
        if config.is_identity:
            raise ValueError("β = 1.0 needs no router: build the model with routing disabled")
        self.config = config
        self.hidden_size = hidden_size
        self.depth = depth
        if config.init == "dtr":
            table = dtr_mask_table(config.num_tasks, hidden_size, config.sharing_ratio, config.alpha)
            masks = table[None]
        else:
            masks = random_mask_tables(
                depth, config.num_tasks, hidden_size, config.sharing_ratio, config.seed
            )
        self.register_buffer("masks", masks, persistent=True)

    @property
    def shared(self) -> bool:
        return self.masks.shape[0] == 1

    def block_tables(self) -> torch.Tensor:
        """(depth, T, C) view of the tables, one per block (the official DTR layout)."""
        return self.masks.expand(self.depth, -1, -1)

    def adopt(self, tables: torch.Tensor) -> None:
        """Replace the masks by externally given (depth, T, C) tables (e.g. an official DTR
        checkpoint). Identical tables collapse back to one shared table."""
        tables = (tables != 0).to(torch.uint8).to(self.masks.device)
        if bool((tables == tables[:1]).all()):
            tables = tables[:1].clone()
        self.masks = tables

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-sample masks (G, N, 1, C) in `dtype` for task indices t (N,)."""
        if t.is_floating_point():
            t = t.round()
        idx = t.long().clamp_(0, self.config.num_tasks - 1)
        return self.masks[:, idx].unsqueeze(2).to(dtype)
