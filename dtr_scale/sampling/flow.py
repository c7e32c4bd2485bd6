"""Flow-matching sampling for the sampler CLI and `generate`: SiT's ODE or SDE over a transport.

    solver = FlowSolver(create_transport("Linear", "velocity"), kind="ode", method="euler", num_steps=50)
    z = solver.sample(denoiser, shape, y=y, noise_fn=PerSampleNoise(generators), device=device)

The starting noise x0 (t = 0) and, for the SDE, every Brownian increment are drawn through
`noise_fn`, i.e. from each sample's own generator, so sample i depends only on (seed, i). The
ODE's fixed-grid solvers (euler, midpoint, rk4, heun...) treat each row alone; the adaptive ones
(dopri5, ...) choose their steps from the error of the whole batch, so their samples may move
within the tolerance with the batch composition (never with the number of ranks: a shard's
batches are the same on any number of ranks).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dtr_scale.flow import Sampler, Transport, create_transport

FLOW_SAMPLERS = ("ode", "sde")


@dataclass
class FlowSolver:
    transport: Transport
    kind: str = "ode"  # ode | sde
    method: str = "dopri5"  # ODE: torchdiffeq's method names; SDE: Euler | Heun
    num_steps: int = 50
    ode_kwargs: dict = field(default_factory=dict)  # atol, rtol
    sde_kwargs: dict = field(default_factory=dict)  # diffusion_form, diffusion_norm, last_step, last_step_size

    def sample(self, denoiser, shape, *, y: torch.Tensor, noise_fn, device: torch.device) -> torch.Tensor:
        z = noise_fn(torch.empty(shape, device=device))
        sampler = Sampler(self.transport)
        if self.kind == "ode":
            fn = sampler.sample_ode(sampling_method=self.method, num_steps=self.num_steps, **self.ode_kwargs)
        else:
            fn = sampler.sample_sde(sampling_method=self.method, num_steps=self.num_steps, noise_fn=noise_fn,
                                    **self.sde_kwargs)
        return fn(z, denoiser, y=y)[-1]


def flow_settings(meta: dict) -> dict:
    """The transport's settings recorded in the weights' metadata (SiT's defaults if absent)."""
    f = dict(meta.get("flow") or {})
    return {"path_type": f.get("path", "Linear"), "prediction": f.get("prediction", "velocity"),
            "sample_eps": f.get("sample_eps"), "train_eps": f.get("train_eps")}


def solver_from_options(opts, meta: dict) -> FlowSolver:
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
