"""Flow matching (SiT's stochastic-interpolant transport) as a training objective and its samplers.

Timesteps are float t in [0, 1] (t = 0 noise, t = 1 data), drawn from the loop's generators;
`noise` is x0. The transport is built once from `diffusion.flow` (`transport_from_section`) for
training and in-loop sampling; the sampler CLI rebuilds it from the weights' metadata.

`FlowSolver` runs SiT's ODE or SDE sampler behind the samplers' common `sample(...)`. The starting
noise x0 and, for the SDE, every Brownian increment are drawn through `noise_fn`, i.e. from each
sample's own generator, so sample i depends only on (seed, i). The ODE's fixed-grid solvers
(euler, midpoint, rk4, heun...) treat each row alone; the adaptive ones (dopri5, ...) choose their
steps from the error of the whole batch, so their samples may move within the tolerance with the
batch composition (never with the number of ranks: a shard's batches are the same on any number).
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field

import torch

from ..diffusion import timestep_cluster
from ..flow import PATHS, PREDICTIONS, Sampler, Transport, create_transport
from ..models.routing import task_index_from_continuous
from .base import Objective, register

FLOW_SAMPLERS = ("ode", "sde")


def transport_from_section(f) -> Transport:
    """The transport that a `diffusion.flow` config section describes."""
    return create_transport(f.path, f.prediction, f.loss_weight, f.train_eps, f.sample_eps)


@register
class FlowObjective(Objective):
    name, title, time_input = "flow", "flow", "continuous"
    config_section = "flow"

    def __init__(self, dit, transport: Transport, time_sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0):
        super().__init__()
        self.dit = dit
        self.weighting = None  # no learned loss weights
        self.transport = transport  # plain object: no parameters
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, logit_mean, logit_std

    @classmethod
    def from_config(cls, cfg, dit) -> "FlowObjective":
        f = cfg.diffusion.flow
        return cls(dit, transport_from_section(f), f.time_sampling, f.logit_mean, f.logit_std)

    @classmethod
    def validate_config(cls, cfg) -> None:
        d = cfg.diffusion
        f = d.flow
        allowed = {"diffusion.flow.path": (f.path, PATHS), "diffusion.flow.prediction": (f.prediction, PREDICTIONS),
                   "diffusion.flow.loss_weight": (f.loss_weight, (None, "velocity", "likelihood")),
                   "diffusion.flow.time_sampling": (f.time_sampling, ("uniform", "logit_normal"))}
        for key, (value, options) in allowed.items():
            if value not in options:
                raise ValueError(f"{key}: got {value!r}; allowed: {', '.join(map(str, options))}")
        for key, value in (("train_eps", f.train_eps), ("sample_eps", f.sample_eps)):
            if value is not None and not 0.0 <= value < 0.5:
                raise ValueError(f"diffusion.flow.{key}: got {value!r}; must be in [0, 0.5) or null (SiT's default)")
        if not (math.isfinite(f.logit_std) and f.logit_std > 0):  # written so that NaN fails it
            raise ValueError(f"diffusion.flow.logit_std: got {f.logit_std!r}; must be a finite number > 0")
        if not math.isfinite(f.logit_mean):
            raise ValueError(f"diffusion.flow.logit_mean: got {f.logit_mean!r}; must be a finite number")
        if d.loss_weighting != "constant":
            raise ValueError(f"diffusion.loss_weighting: got {d.loss_weighting!r} with objective=flow; flow "
                             "weights its loss with diffusion.flow.loss_weight (set diffusion.loss_weighting=constant)")

    # ------------------------------------------------------------------------------ training
    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """uniform (SiT) or logit-normal (SD3: sigmoid of N(mean, std²)), mapped into the
        transport's training interval [t0, t1]."""
        t0, t1 = self.transport.interval()
        if self.time_sampling == "logit_normal":
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch_size, generator=generator))
        else:
            u = torch.rand(batch_size, generator=generator)
        return u * (t1 - t0) + t0

    def forward(self, x, t, y, noise, drop=None, images=None):
        kwargs = {"y": y} if drop is None else {"y": y, "force_drop": drop}
        dit, kept = self.denoiser()
        per_sample = self.transport.training_losses(dit, x, model_kwargs=kwargs, t=t, x0=noise)["loss"]
        return self.with_alignment(per_sample.mean(), kept, images), per_sample.detach()

    def timestep_clusters(self, t: torch.Tensor, num_clusters: int) -> torch.Tensor:
        """Bins of the DTR task round((1 - t)(T - 1)), so bin 0 is the least noisy as for DDPM."""
        return timestep_cluster(task_index_from_continuous(t, 1000), 1000, num_clusters)

    # ------------------------------------------------------------------------------ sampling
    @classmethod
    def eval_sampler(cls, cfg) -> "FlowSolver":
        """The run's transport solved by an Euler ODE (fixed grid: a sample does not depend on its
        batch) over as many steps as `eval.sampling_steps` names ("250" or "ddim50": 250 or 50)."""
        steps = int("".join(ch for ch in cfg.eval.sampling_steps if ch.isdigit()) or 50)
        # steps + 1 grid times = steps Euler steps
        return FlowSolver(transport_from_section(cfg.diffusion.flow), "ode", "euler", steps + 1)

    @classmethod
    def sampler_protocol(cls, opts) -> dict:
        method = opts.ode_method if opts.flow_sampler == "ode" else opts.sde_method
        sampler = f"{opts.flow_sampler} {method}"
        return {"sampler": sampler, "steps": opts.num_steps, "label": f"flow {sampler} NFE"}

    @classmethod
    def eval_sampler_protocol(cls, cfg) -> dict:
        solver = cls.eval_sampler(cfg)
        return {"sampler": f"{solver.kind} {solver.method}", "steps": solver.num_steps - 1,
                "label": f"flow {solver.kind} {solver.method} NFE"}

    @classmethod
    def foreign_option(cls, owner: str) -> str:
        return "unset with objective=flow (use flow_sampler, ode_method / sde_method, num_steps)"

    @classmethod
    def sampler_from_options(cls, opts, meta: dict, model) -> "FlowSolver":
        settings = flow_settings(meta)
        if opts.flow_path is not None:
            settings["path_type"] = opts.flow_path
        if opts.flow_prediction is not None:
            settings["prediction"] = opts.flow_prediction
        transport = create_transport(**settings)
        if opts.flow_sampler == "ode":
            return FlowSolver(transport, "ode", opts.ode_method, opts.num_steps,
                              ode_kwargs={"atol": opts.atol, "rtol": opts.rtol})
        last = None if opts.last_step == "none" else opts.last_step
        return FlowSolver(transport, "sde", opts.sde_method, opts.num_steps,
                          sde_kwargs={"diffusion_form": opts.diffusion_form, "diffusion_norm": opts.diffusion_norm,
                                      "last_step": last, "last_step_size": opts.last_step_size})


def flow_settings(meta: dict) -> dict:
    """The transport's settings recorded in the weights' metadata (SiT's defaults if absent)."""
    f = dict(meta.get("flow") or {})
    return {"path_type": f.get("path", "Linear"), "prediction": f.get("prediction", "velocity"),
            "sample_eps": f.get("sample_eps"), "train_eps": f.get("train_eps")}


@dataclass
class FlowSolver:
    """SiT's ODE or SDE sampler over a transport.

        solver = FlowSolver(create_transport("Linear", "velocity"), kind="ode", method="euler", num_steps=50)
        z = solver.sample(denoiser, shape, y=y, noise_fn=PerSampleNoise(generators), device=device)
    """
    transport: Transport
    kind: str = "ode"  # ode | sde
    method: str = "dopri5"  # ODE: torchdiffeq's method names; SDE: Euler | Heun
    num_steps: int = 50
    ode_kwargs: dict = field(default_factory=dict)  # atol, rtol
    sde_kwargs: dict = field(default_factory=dict)  # diffusion_form, diffusion_norm, last_step, last_step_size

    def sample(self, denoiser, shape, *, y: torch.Tensor, noise_fn, device: torch.device, **_ddpm) -> torch.Tensor:
        """The final state; the DDPM samplers' `sampler`/`eta` arguments are not flow's (unused)."""
        z = noise_fn(torch.empty(shape, device=device))
        sampler = Sampler(self.transport)
        if self.kind == "ode":
            fn = sampler.sample_ode(sampling_method=self.method, num_steps=self.num_steps, **self.ode_kwargs)
        else:
            fn = sampler.sample_sde(sampling_method=self.method, num_steps=self.num_steps, noise_fn=noise_fn,
                                    **self.sde_kwargs)
        return fn(z, denoiser, y=y)[-1]
