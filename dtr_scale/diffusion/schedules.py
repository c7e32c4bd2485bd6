"""Beta schedules for the discrete forward process q(x_t | x_{t-1}) = N(sqrt(1-β_t) x_{t-1}, β_t I).

All arithmetic is float64 numpy: the constants derived from β (ᾱ, posterior coefficients,
SNR) are products over up to 1000 terms, and float32 rounding there shows up as visible bias
in the high-noise end of the schedule.
"""

from __future__ import annotations

import math

import numpy as np

NOISE_SCHEDULES = ("linear", "cosine")


def linear_betas(num_timesteps: int) -> np.ndarray:
    """DiT/ADM linear schedule, scaled so that any step count spans the same process.

    The 1000-step endpoints are β_1 = 1e-4 and β_T = 0.02 (Ho et al. 2020); with T steps both are
    multiplied by 1000/T so that the total noise added stays about the same.
    """
    _check_steps(num_timesteps)
    if num_timesteps <= 20:
        raise ValueError(
            f"diffusion_steps={num_timesteps} is too few for the linear schedule: its last β is "
            f"20/diffusion_steps = {20 / num_timesteps:g}, which must stay below 1; use more than "
            "20 steps (respace for fast sampling) or noise_schedule='cosine'"
        )
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(u: np.ndarray, s: float = 0.008) -> np.ndarray:
    """ᾱ(u) for continuous u in [0, 1] (Nichol & Dhariwal 2021, eq. 17, before normalising by ᾱ(0))."""
    return np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """iDDPM cosine schedule: β_t = 1 - ᾱ(t/T)/ᾱ((t-1)/T), clipped at max_beta.

    The clip keeps β_T < 1: at the very end ᾱ reaches 0 and β would be 1, which makes the
    reverse-process variance singular.
    """
    _check_steps(num_timesteps)
    grid = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(grid, s)
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.minimum(betas, max_beta)


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """β_1..β_T (float64, shape (T,)) for a schedule name in NOISE_SCHEDULES."""
    if name == "linear":
        return linear_betas(num_timesteps)
    if name == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(
        f"noise_schedule={name!r} is not known; allowed values: {', '.join(NOISE_SCHEDULES)}"
    )


def _check_steps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, (int, np.integer)) or isinstance(num_timesteps, bool) \
            or num_timesteps < 1:
        raise ValueError(f"diffusion_steps must be a positive integer, got {num_timesteps!r}")
