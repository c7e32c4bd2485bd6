"""The training objective as one module: the DiT plus the loss weighting's own parameters.

Every engine wraps this single module, so ANT-UW's learned log-variances are reduced, sharded,
checkpointed and optimized exactly like the DiT's weights, with no engine-specific code.
`forward` returns the scalar loss to back-propagate and the per-sample losses for logging.
"""
from __future__ import annotations

import torch
from torch import nn

from .diffusion import AntUncertaintyWeighting, create_diffusion, uniform_timesteps
from .models import DiT, create_model


class DiffusionObjective(nn.Module):
    def __init__(self, dit: DiT, diffusion, weighting: AntUncertaintyWeighting | None = None):
        super().__init__()
        self.dit = dit
        self.weighting = weighting
        self.diffusion = diffusion  # plain object: no parameters, not registered as a module

    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """ANT-UW stratifies timesteps over its clusters; otherwise uniform (DiT)."""
        if self.weighting is not None:
            return self.weighting.sample_timesteps(batch_size, generator=generator)
        return uniform_timesteps(batch_size, self.diffusion.num_timesteps, generator=generator)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, noise: torch.Tensor):
        terms = self.diffusion.training_losses(self.dit, x, t, model_kwargs={"y": y}, noise=noise)
        per_sample = terms["loss"]
        if self.weighting is not None:
            loss = self.weighting(per_sample, t)
        else:
            loss = per_sample.mean()
        return loss, per_sample.detach()


def dit_from_config(cfg, **overrides) -> DiT:
    """The DiT that `cfg.model` describes (shape fields filled in); `overrides` replace
    create_model arguments, e.g. attention="auto" for a model rebuilt for sampling."""
    m = cfg.model
    kwargs = dict(input_size=m.input_size, in_channels=m.in_channels, num_classes=m.num_classes,
                  learn_sigma=m.learn_sigma, class_dropout_prob=m.class_dropout_prob,
                  routing=m.routing, attention=m.attention, checkpointing=m.checkpointing)
    return create_model(m.name, **{**kwargs, **overrides})


def build_objective(cfg, dit: DiT) -> DiffusionObjective:
    d = cfg.diffusion
    diffusion = create_diffusion(
        timestep_respacing="",
        noise_schedule=d.schedule,
        learn_sigma=cfg.model.learn_sigma,
        diffusion_steps=d.steps,
        loss_weighting=d.loss_weighting,
        snr_gamma=d.snr_gamma,
        p2_gamma=d.p2_gamma,
        p2_k=d.p2_k,
    )
    weighting = AntUncertaintyWeighting(d.steps, d.ant_clusters) if d.loss_weighting == "ant_uw" else None
    return DiffusionObjective(dit, diffusion, weighting)
