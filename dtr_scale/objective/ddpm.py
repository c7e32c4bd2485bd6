"""DDPM (ADM / DiT): ε-prediction over a discrete β schedule, with its loss weightings.

The per-sample loss is the weighted ε-MSE plus the unweighted VB term of the learned variance
(DiT's "MSE" loss type). The weights live here: Min-SNR-γ and P2 multiply the MSE term by their
per-timestep table (diffusion/loss_weighting.py has the formulas); ANT-UW draws stratified
timesteps and combines the per-cluster means with learned log-variances
(diffusion/ant_uw.py), which train in their own optimizer group. `create_diffusion` keeps its
ADM-style `loss_weighting` argument for code that calls it directly; the objective builds its
diffusion unweighted and applies the weights itself, which gives the same numbers.
"""
from __future__ import annotations

import torch

from ..diffusion import AntUncertaintyWeighting, create_diffusion, timestep_cluster, uniform_timesteps
from ..diffusion.loss_weighting import loss_weight_table
from .base import Objective, register


@register
class DDPMObjective(Objective):
    name, title, time_input = "ddpm", "DDPM", "discrete"
    unfingerprinted = ("ant_lr",)  # ANT-UW's LR is a training choice, not part of the objective

    def __init__(self, dit, diffusion, loss_weighting: str = "constant", snr_gamma: float = 5.0,
                 p2_gamma: float = 1.0, p2_k: float = 1.0, ant_clusters: int = 8, ant_lr: float = 0.025):
        super().__init__()
        self.dit = dit
        self.diffusion = diffusion  # plain object, built unweighted: no parameters, not a module
        self.loss_weighting = loss_weighting
        table = loss_weight_table(loss_weighting, diffusion.alphas_cumprod, snr_gamma, p2_gamma, p2_k)
        self._weights_f64 = torch.from_numpy(table)  # float64, cast per device and dtype when used
        self._weights: dict = {}
        self.weighting = (AntUncertaintyWeighting(diffusion.num_timesteps, ant_clusters)
                          if loss_weighting == "ant_uw" else None)
        self.ant_lr = ant_lr

    @classmethod
    def from_config(cls, cfg, dit) -> "DDPMObjective":
        d = cfg.diffusion
        diffusion = create_diffusion(timestep_respacing="", noise_schedule=d.schedule,
                                     learn_sigma=cfg.model.learn_sigma, diffusion_steps=d.steps)
        return cls(dit, diffusion, d.loss_weighting, d.snr_gamma, d.p2_gamma, d.p2_k, d.ant_clusters, d.ant_lr)

    @classmethod
    def validate_config(cls, cfg) -> None:
        if cfg.data.mode == "global" and cfg.diffusion.loss_weighting == "ant_uw":
            # ANT-UW weighs per-cluster means of each rank's batch: not a sum of per-sample terms,
            # so its loss (not just its timesteps) would change with the world size.
            raise ValueError("diffusion.loss_weighting=ant_uw cannot be used with data.mode=global: ANT-UW "
                             "averages losses per timestep cluster within each rank's batch, which depends on "
                             "the world size; use data.mode=resampled|epoch, or another diffusion.loss_weighting")

    # ------------------------------------------------------------------------------ training
    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """ANT-UW stratifies timesteps over its clusters; otherwise uniform (DiT)."""
        if self.weighting is not None:
            return self.weighting.sample_timesteps(batch_size, generator=generator)
        return uniform_timesteps(batch_size, self.diffusion.num_timesteps, generator=generator)

    def draw_inputs(self, x: torch.Tensor, draws) -> tuple:
        if self.weighting is not None and draws.per_sample:
            raise ValueError("ANT-UW's stratified timesteps are per batch, not per sample (see config)")
        return super().draw_inputs(x, draws)

    def loss_weights(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(N,) weights of the MSE term at timesteps t, in `like`'s dtype promoted to fp32."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        key = (like.device, dtype)
        if key not in self._weights:
            self._weights[key] = self._weights_f64.to(device=like.device, dtype=dtype)
        return self._weights[key][t.to(device=like.device, dtype=torch.long)]

    def forward(self, x, t, y, noise, drop=None, images=None):
        kwargs = {"y": y} if drop is None else {"y": y, "force_drop": drop}
        dit, kept = self.denoiser()
        terms = self.diffusion.training_losses(dit, x, t, model_kwargs=kwargs, noise=noise)
        per_sample = self.loss_weights(t, terms["mse"]) * terms["mse"] + terms["vb"]
        loss = self.weighting(per_sample, t) if self.weighting is not None else per_sample.mean()
        return self.with_alignment(loss, kept, images), per_sample.detach()

    def timestep_clusters(self, t: torch.Tensor, num_clusters: int) -> torch.Tensor:
        """Logging bins: floor(t·K/T), bin 0 the least noisy."""
        return timestep_cluster(t, self.diffusion.num_timesteps, num_clusters)

    def extra_param_groups(self) -> list[dict]:
        """ANT-UW's s_k: own LR, no weight decay (decay would pull every s_k back toward equal weights)."""
        return self.weighting.param_groups(self.ant_lr) if self.weighting is not None else []

    # ------------------------------------------------------------------------------ sampling
    @classmethod
    def eval_sampler(cls, cfg):
        """DDPM respaced as `eval.sampling_steps`."""
        d = cfg.diffusion
        return create_diffusion(timestep_respacing=cfg.eval.sampling_steps, noise_schedule=d.schedule,
                                learn_sigma=cfg.model.learn_sigma, diffusion_steps=d.steps)

    @classmethod
    def sampler_from_options(cls, opts, meta: dict, model):
        """The respaced diffusion of `steps` over the weights' recorded schedule."""
        schedule = meta.get("diffusion") or {}
        return create_diffusion(opts.resolved_steps(), noise_schedule=schedule.get("schedule", "linear"),
                                learn_sigma=model.learn_sigma, diffusion_steps=int(schedule.get("steps", 1000)))

    @classmethod
    def sampler_protocol(cls, opts) -> dict:
        return {"sampler": opts.sampler, "steps": opts.resolved_steps(), "label": opts.sampler.upper()}

    @classmethod
    def eval_sampler_protocol(cls, cfg) -> dict:
        # In-loop sampling is ancestral (generate's default) over the respaced steps.
        return {"sampler": "ddpm", "steps": cfg.eval.sampling_steps, "label": "DDPM"}
