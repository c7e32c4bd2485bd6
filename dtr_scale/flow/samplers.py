"""ODE and SDE samplers over a transport, with SiT's names, defaults and time grids.

Both return `fn(z, model_fn, **model_kwargs)` -> list of states from the noise z (t = 0) towards
data (t = 1); the last state is the sample. `model_fn(x, t, **model_kwargs)` is the network (or a
guided wrapper of it) called with float t of shape (N,).

ODE: torchdiffeq's `odeint` on `num_steps` equally spaced times (fixed-grid solvers such as
"euler" take num_steps − 1 steps; adaptive ones such as "dopri5" report those times).
SDE: dx = [v(x,t) + D(t)·score(x,t)] dt + sqrt(2·D(t)) dW on num_steps − 1 steps of
Euler–Maruyama or stochastic Heun, then one deterministic last step of `last_step_size`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .paths import expand_like
from .transport import Transport

ODE_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "heun2", "heun3",
               "bosh3", "fehlberg2", "adaptive_heun", "dopri5", "dopri8")
SDE_METHODS = ("Euler", "Heun")
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = (None, "Mean", "Tweedie", "Euler")


def diffusion_coefficient(transport: Transport, form: str, norm: float) -> Callable:
    """D(x, t) of the SDE, as SiT defines each form (t broadcastable against x)."""
    path = transport.path
    forms = {
        "constant": lambda x, t: torch.full_like(t, norm),
        "SBDM": lambda x, t: norm * path.score_split(x, t)[1],  # b_t: the VP/score-SDE choice
        "sigma": lambda x, t: norm * path.sigma(t)[0],
        "linear": lambda x, t: norm * (1 - t),
        "decreasing": lambda x, t: 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2,
        "increasing-decreasing": lambda x, t: norm * torch.sin(math.pi * t) ** 2,
    }
    if form not in forms:
        raise ValueError(f"diffusion_form={form!r}: expected one of {', '.join(DIFFUSION_FORMS)}")
    return forms[form]


class Sampler:
    def __init__(self, transport: Transport):
        self.transport = transport

    # ---- the two fields the integrators need ------------------------------------------------
    def velocity(self, x, t, model_fn, **model_kwargs):
        """Probability-flow ODE drift v(x, t)."""
        return self.transport.velocity_and_score(model_fn(x, t, **model_kwargs), x, t, need_score=False)[0]

    def sde_drift(self, diffusion: Callable):
        def drift(x, t, model_fn, **model_kwargs):
            v, score = self.transport.velocity_and_score(model_fn(x, t, **model_kwargs), x, t)
            return v + diffusion(x, expand_like(t, x)) * score
        return drift

    # ---- ODE ----------------------------------------------------------------------------------
    def sample_ode(self, *, sampling_method="dopri5", num_steps=50, atol=1e-6, rtol=1e-3, reverse=False):
        from torchdiffeq import odeint

        if sampling_method not in ODE_METHODS:
            raise ValueError(f"ode solver {sampling_method!r}: expected one of {', '.join(ODE_METHODS)}")
        if num_steps < 2:
            raise ValueError(f"num_steps={num_steps}: the ODE grid needs at least 2 times")
        t0, t1 = self.transport.interval(sampling=True, reverse=reverse)
        grid = torch.linspace(t0, t1, num_steps)

        def fn(z, model_fn, **model_kwargs):
            def field(t, x):
                return self.velocity(x, torch.ones(x.shape[0], device=x.device) * t, model_fn, **model_kwargs)

            states = odeint(field, z, grid.to(z.device), method=sampling_method, atol=atol, rtol=rtol)
            return list(states.unbind(0))

        return fn

    # ---- SDE ----------------------------------------------------------------------------------
    def sample_sde(self, *, sampling_method="Euler", diffusion_form="SBDM", diffusion_norm=1.0,
                   last_step="Mean", last_step_size=0.04, num_steps=250, noise_fn=None):
        """`noise_fn(x)` draws the Brownian increments' N(0, I) (default: torch's global
        generator, as SiT); the distributed sampler passes per-sample generators."""
        if sampling_method not in SDE_METHODS:
            raise ValueError(f"sde sampling_method={sampling_method!r}: expected one of {', '.join(SDE_METHODS)}")
        if last_step not in LAST_STEPS:
            raise ValueError(f"last_step={last_step!r}: expected none, Mean, Tweedie or Euler")
        if num_steps < 2:
            raise ValueError(f"num_steps={num_steps}: the SDE grid needs at least 2 times")
        if last_step is None:
            last_step_size = 0.0
        diffusion = diffusion_coefficient(self.transport, diffusion_form, diffusion_norm)
        drift = self.sde_drift(diffusion)
        t0, t1 = self.transport.interval(sde=True, diffusion_form=diffusion_form, sampling=True,
                                         last_step_size=last_step_size)
        grid = torch.linspace(t0, t1, num_steps)
        dt = grid[1] - grid[0]
        draw = noise_fn or (lambda x: torch.randn(x.size()).to(x))
        step = self._euler_maruyama if sampling_method == "Euler" else self._heun

        def fn(z, model_fn, **model_kwargs):
            x, states = z, []
            with torch.no_grad():
                for t in grid[:-1]:
                    x = step(x, t, dt, drift, diffusion, draw, model_fn, model_kwargs)
                    states.append(x)
                t_last = torch.ones(z.shape[0], device=z.device) * t1
                states.append(self._last_step(last_step, last_step_size, drift, x, t_last, model_fn, model_kwargs))
            return states

        return fn

    @staticmethod
    def _euler_maruyama(x, t, dt, drift, diffusion, draw, model_fn, model_kwargs):
        dw = draw(x) * torch.sqrt(dt)
        t = torch.ones(x.shape[0]).to(x) * t
        mean = x + drift(x, t, model_fn, **model_kwargs) * dt
        return mean + torch.sqrt(2 * diffusion(x, expand_like(t, x))) * dw

    @staticmethod
    def _heun(x, t, dt, drift, diffusion, draw, model_fn, model_kwargs):
        dw = draw(x) * torch.sqrt(dt)
        t = torch.ones(x.shape[0]).to(x) * t
        x_hat = x + torch.sqrt(2 * diffusion(x, expand_like(t, x))) * dw
        k1 = drift(x_hat, t, model_fn, **model_kwargs)
        k2 = drift(x_hat + dt * k1, t + dt, model_fn, **model_kwargs)
        return x_hat + 0.5 * dt * (k1 + k2)

    def _last_step(self, kind, size, drift, x, t, model_fn, model_kwargs):
        if kind is None:
            return x
        if kind == "Mean":  # one more drift step without noise: the mean of the last transition
            return x + drift(x, t, model_fn, **model_kwargs) * size
        if kind == "Euler":  # one probability-flow ODE step
            return x + self.velocity(x, t, model_fn, **model_kwargs) * size
        # Tweedie: E[x1 | x_t] = (x_t + σ_t²·score) / α_t, with the batch's (common) time
        alpha = self.transport.path.alpha(t)[0][0]
        sigma = self.transport.path.sigma(t)[0][0]
        score = self.transport.velocity_and_score(model_fn(x, t, **model_kwargs), x, t)[1]
        return x / alpha + (sigma**2) / alpha * score
