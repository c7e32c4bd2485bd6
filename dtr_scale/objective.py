"""The training objective as one module: the DiT plus the loss weighting's own parameters.

Every engine wraps this single module, so ANT-UW's learned log-variances are reduced, sharded,
checkpointed and optimized exactly like the DiT's weights, with no engine-specific code.
`forward` returns the scalar loss to back-propagate and the per-sample losses for logging.

`draw_inputs` turns a loader batch into the forward's inputs. The streaming modes' `(x, y)`
batches get timesteps and noise from the rank's generators (label dropout is drawn inside the
DiT); `data.mode=global`'s batches carry each sample's global position, and every draw for a
sample comes from its own generator seeded by (seed, position), so it does not depend on which
rank, micro-batch or world size the sample lands in.
"""
from __future__ import annotations

import torch
from torch import nn

from .data.global_order import TRAIN_TAG, sample_generator
from .diffusion import AntUncertaintyWeighting, create_diffusion, timestep_cluster, uniform_timesteps
from .flow import create_transport
from .models import DiT, create_model
from .models.routing import task_index_from_continuous


class Objective(nn.Module):
    """What the training loop calls, whichever objective trains the DiT: `draw_inputs`, then
    `forward(x, t, y, noise, drop)` → (loss, per-sample losses), and `timestep_clusters` for
    logging. Subclasses set `dit`, `weighting` (learned loss weights or None) and `seed`, and
    define `sample_timesteps`."""

    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups for every engine: decay on the DiT's weight matrices only (biases and other
        1-D params untouched), and learned loss weights (ANT-UW's log-variances) in their own group
        with their own LR (`ant_lr`) and no decay. Every group records `base_lr`, which the warmup
        schedule scales. Call it after the engine has sharded the module (FSDP2 replaces the
        parameters by DTensors)."""
        decay, no_decay = [], []
        for p in self.dit.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [
            {"params": decay, "lr": lr, "weight_decay": weight_decay, "base_lr": lr},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "base_lr": lr},
        ]
        if self.weighting is not None:
            groups += [{**g, "base_lr": g["lr"]} for g in self.weighting.param_groups(self.ant_lr)]
        return [g for g in groups if g["params"]]

    def draw_inputs(self, batch, gen_t: torch.Generator, gen_noise: torch.Generator, device: torch.device):
        """(x, y, t, noise, drop) on `device` for one micro-batch; drop is None when the DiT draws it."""
        positions = getattr(batch, "positions", None)
        x, y = batch[0], batch[1]
        if positions is None:
            t = self.sample_timesteps(x.shape[0], gen_t)
            noise = torch.randn(x.shape, generator=gen_noise)
            drop = None
        else:
            t, noise, drop = self.positioned_draws(positions, x.shape[1:])
        return tuple(v if v is None else v.to(device, non_blocking=True) for v in (x, y, t, noise, drop))

    def positioned_draws(self, positions: torch.Tensor, sample_shape) -> tuple[torch.Tensor, ...]:
        """Timestep, noise and label-dropout decision of each sample from its own generator."""
        if self.weighting is not None:
            raise ValueError("ANT-UW's stratified timesteps are per batch, not per sample (see config)")
        p_drop = self.dit.y_embedder.dropout_prob
        ts, noises, drops = [], [], []
        for pos in positions.tolist():
            g = sample_generator(self.seed, pos, TRAIN_TAG)
            ts.append(self.sample_timesteps(1, g))
            drops.append(torch.rand(1, generator=g) < p_drop)
            noises.append(torch.randn(tuple(sample_shape), generator=g))
        return torch.cat(ts), torch.stack(noises), torch.cat(drops)


class DiffusionObjective(Objective):
    def __init__(self, dit: DiT, diffusion, weighting: AntUncertaintyWeighting | None = None, seed: int = 0,
                 ant_lr: float = 0.025):
        super().__init__()
        self.dit = dit
        self.weighting = weighting
        self.ant_lr = ant_lr  # the learning rate of the weighting's own parameters
        self.diffusion = diffusion  # plain object: no parameters, not registered as a module
        self.seed = seed  # for the per-sample draws of positioned (data.mode=global) batches

    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """ANT-UW stratifies timesteps over its clusters; otherwise uniform (DiT)."""
        if self.weighting is not None:
            return self.weighting.sample_timesteps(batch_size, generator=generator)
        return uniform_timesteps(batch_size, self.diffusion.num_timesteps, generator=generator)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                drop: torch.Tensor | None = None):
        kwargs = {"y": y} if drop is None else {"y": y, "force_drop": drop}
        terms = self.diffusion.training_losses(self.dit, x, t, model_kwargs=kwargs, noise=noise)
        per_sample = terms["loss"]
        if self.weighting is not None:
            loss = self.weighting(per_sample, t)
        else:
            loss = per_sample.mean()
        return loss, per_sample.detach()

    def timestep_clusters(self, t: torch.Tensor, num_clusters: int) -> torch.Tensor:
        """Logging bins: floor(t·K/T), bin 0 the least noisy."""
        return timestep_cluster(t, self.diffusion.num_timesteps, num_clusters)


class FlowObjective(Objective):
    """Flow matching (SiT's transport) behind the same interface: timesteps are float t in
    [0, 1] (t = 0 noise), drawn from the loop's generator; `noise` is x0."""

    def __init__(self, dit: DiT, transport, time_sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, seed: int = 0):
        super().__init__()
        self.dit = dit
        self.weighting = None  # engines look for learned loss weights (ANT-UW); flow has none
        self.seed = seed  # for the per-sample draws of positioned (data.mode=global) batches
        self.transport = transport  # plain object: no parameters
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std

    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """uniform (SiT) or logit-normal (SD3: sigmoid of N(mean, std²)), mapped into the
        transport's training interval [t0, t1]."""
        t0, t1 = self.transport.interval()
        if self.time_sampling == "logit_normal":
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch_size, generator=generator))
        else:
            u = torch.rand(batch_size, generator=generator)
        return u * (t1 - t0) + t0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                drop: torch.Tensor | None = None):
        kwargs = {"y": y} if drop is None else {"y": y, "force_drop": drop}
        per_sample = self.transport.training_losses(self.dit, x, model_kwargs=kwargs, t=t, x0=noise)["loss"]
        return per_sample.mean(), per_sample.detach()

    def timestep_clusters(self, t: torch.Tensor, num_clusters: int) -> torch.Tensor:
        """Bins of the DTR task round((1 - t)(T - 1)), so bin 0 is the least noisy as for DDPM."""
        return timestep_cluster(task_index_from_continuous(t, 1000), 1000, num_clusters)


def dit_from_config(cfg, **overrides) -> DiT:
    """The DiT that `cfg.model` describes (shape fields filled in); `overrides` replace
    create_model arguments, e.g. attention="auto" for a model rebuilt for sampling."""
    m = cfg.model
    kwargs = dict(input_size=m.input_size, in_channels=m.in_channels, num_classes=m.num_classes,
                  learn_sigma=m.learn_sigma, class_dropout_prob=m.class_dropout_prob,
                  routing=m.routing, attention=m.attention, checkpointing=m.checkpointing,
                  time_input="continuous" if cfg.diffusion.objective == "flow" else "discrete")
    return create_model(m.name, **{**kwargs, **overrides})


def build_objective(cfg, dit: DiT) -> DiffusionObjective | FlowObjective:
    d = cfg.diffusion
    if d.objective == "flow":
        f = d.flow
        transport = create_transport(f.path, f.prediction, f.loss_weight, f.train_eps, f.sample_eps)
        return FlowObjective(dit, transport, f.time_sampling, f.logit_mean, f.logit_std, seed=cfg.train.seed)
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
    return DiffusionObjective(dit, diffusion, weighting, seed=cfg.train.seed, ant_lr=d.ant_lr)
