"""The interface every training objective implements, and the registry that finds them by name.

An objective is one `nn.Module` holding the DiT (`dit`) and the objective's own parameters (ANT-UW's
log-variances live in DDPM's `weighting`), so every engine wraps, reduces, shards and checkpoints
them like the DiT's weights. It owns everything that differs between objectives:

- training: `draw_inputs` (its time distribution, through the draws `randomness` gives it),
  `forward(x, t, y, noise, drop)` → (scalar loss, per-sample losses), loss weighting included,
  `timestep_clusters` (the per-cluster log's bins), `param_groups(lr, weight_decay)` (engines
  build the optimizer from them, and build the objective's own parameters outside any meta device);
- configuration: `config_section` (its sub-section of `diffusion`, if any) and `validate_config`;
- sampling: `eval_sampler(cfg)` (in-loop), `sampler_from_options(opts, meta, model)` (the CLI),
  `check_sample_options`; the samplers all offer `sample(denoiser, shape, y=, noise_fn=, device=, ...)`;
- records: `export_metadata(cfg)` (its part of the exported weights' metadata) and
  `fingerprint(cfg)` (its part of a checkpoint's resume fingerprint).

Class-level methods are what code without a trained instance calls (export, the sampler CLI).
"""
from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

DEFAULT_OBJECTIVE = "ddpm"  # what weights that record no objective were trained with
_REGISTRY: dict[str, type["Objective"]] = {}


def register(cls: type["Objective"]) -> type["Objective"]:
    _REGISTRY[cls.name] = cls
    return cls


def objective_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def objective_class(name: str) -> type["Objective"]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"diffusion.objective: got {name!r}; allowed: {', '.join(_REGISTRY)}") from None


class Objective(nn.Module):
    name: str = ""  # the value of diffusion.objective
    title: str = ""  # how messages name it
    time_input: str = "discrete"  # the DiT's time embedding: discrete steps or continuous t
    config_section: str | None = None  # its own sub-section of cfg.diffusion (filled with defaults)
    unfingerprinted: tuple[str, ...] = ()  # diffusion keys that are training choices, not meaning
    dit: nn.Module

    def __init__(self):
        super().__init__()
        self.repa = None  # REPA's alignment term (objective/repa.py), set by build_objective when on

    # ------------------------------------------------------------------------------ training
    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def draw_inputs(self, x: torch.Tensor, draws) -> tuple:
        """(t, noise, drop) for the clean batch `x` from `draws` (randomness.RankDraws or
        PositionDraws); drop is None when the DiT draws label dropout itself."""
        return draws.draw(x.shape[0], x.shape[1:], self.sample_timesteps, self.dit.y_embedder.dropout_prob)

    def forward(self, x, t, y, noise, drop=None, images=None):
        """`images`: the batch's clean uint8 images, which REPA's term needs (None otherwise)."""
        raise NotImplementedError

    def denoiser(self) -> tuple:
        """(the DiT as the loss maths calls it, what it leaves for `with_alignment`). Without
        REPA that is the DiT itself; with it, a call that also keeps block `repa.depth`'s output."""
        if self.repa is None:
            return self.dit, None
        kept = {}

        def dit(x, t, **kwargs):
            out, kept["hidden"] = self.dit(x, t, hidden_at=self.repa.depth, **kwargs)
            return out
        return dit, kept

    def with_alignment(self, loss: torch.Tensor, kept, images) -> torch.Tensor:
        """The objective's loss plus `repa.coeff` × REPA's batch-mean alignment loss (if on)."""
        if self.repa is None:
            return loss
        return loss + self.repa.coeff * self.repa(kept["hidden"], images, self.dit.x_embedder.grid_size).mean()

    def timestep_clusters(self, t: torch.Tensor, num_clusters: int) -> torch.Tensor:
        raise NotImplementedError

    def extra_param_groups(self) -> list[dict]:
        """Groups of the objective's own parameters (beside the DiT's), with their own LR."""
        return []

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on the DiT's weight matrices only (biases, norms and 1-D
        embeddings untouched), then the objective's own groups. Every group records `base_lr`,
        which the warmup schedule scales."""
        decay, no_decay = [], []
        trained = [*self.dit.parameters(), *(self.repa.parameters() if self.repa is not None else ())]
        for p in trained:  # the REPA projector's weights decay like the DiT's
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, "base_lr": lr},
                  {"params": no_decay, "lr": lr, "weight_decay": 0.0, "base_lr": lr}]
        groups += [{**g, "base_lr": g["lr"]} for g in self.extra_param_groups()]
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------------- configuration
    @classmethod
    def from_config(cls, cfg, dit: nn.Module) -> "Objective":
        raise NotImplementedError

    @classmethod
    def validate_config(cls, cfg) -> None:
        """Raise ValueError naming the key for settings this objective cannot train with."""

    # ------------------------------------------------------------------------------ sampling
    @classmethod
    def eval_sampler(cls, cfg):
        """The sampler of in-loop grids and evaluation, from `cfg.eval.sampling_steps`."""
        raise NotImplementedError

    @classmethod
    def sampler_from_options(cls, opts, meta: dict, model):
        """The sampler CLI's sampler, from its options and the weights' metadata."""
        raise NotImplementedError

    @classmethod
    def sampler_protocol(cls, opts) -> dict:
        """How the sampler CLI's options name this objective's sampler in a report's protocol:
        `sampler`, `steps`, and `label`, the summary line's name before the NFE (protocol.py)."""
        raise NotImplementedError

    @classmethod
    def eval_sampler_protocol(cls, cfg) -> dict:
        """The same for `eval_sampler(cfg)` (in-loop evaluation)."""
        raise NotImplementedError

    @classmethod
    def foreign_option(cls, owner: str) -> str:
        """What is allowed for a sampler option of objective `owner` with this one's weights."""
        return f"unset unless objective={owner} (the weights are a {cls.title} model)"

    # ------------------------------------------------------------------------------- records
    @classmethod
    def export_metadata(cls, cfg) -> dict:
        """The objective's part of the exported weights' metadata: the schedule, its name, and
        every objective's own section (None unless it is this one)."""
        d = cfg.diffusion
        meta = {"diffusion": {"schedule": d.schedule, "steps": d.steps}, "objective": cls.name}
        for other in _REGISTRY.values():
            if other.config_section:
                section = getattr(d, other.config_section)
                meta[other.config_section] = dataclasses.asdict(section) if section is not None else None
        if cfg.repa.enabled:  # what the weights were trained with; sampling needs nothing of it
            meta["repa"] = repa_record(cfg)
        return meta

    @classmethod
    def fingerprint(cls, cfg) -> dict:
        """The diffusion section as a checkpoint's state depends on it (sub-sections nested),
        without the keys that are training choices only."""
        skip = {k for other in _REGISTRY.values() for k in other.unfingerprinted}
        out = {k: v for k, v in dataclasses.asdict(cfg.diffusion).items() if k not in skip}
        if cfg.repa.enabled:  # the projector's shape is part of the state (absent when off: old checkpoints resume)
            out["repa"] = {k: getattr(cfg.repa, k) for k in ("encoder", "depth", "projector_dim")}
        return out


def repa_record(cfg) -> dict:
    """REPA's settings as the export records them (the weights file by name, not by path)."""
    r = dataclasses.asdict(cfg.repa)
    r["encoder_weights"] = os.path.basename(r["encoder_weights"] or "")
    return r
