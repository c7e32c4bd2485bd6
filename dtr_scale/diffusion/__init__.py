"""Gaussian diffusion (ADM / DiT semantics), respacing, samplers and loss weighting."""

from __future__ import annotations

from .ant_uw import AntUncertaintyWeighting, timestep_cluster
from .gaussian_diffusion import GaussianDiffusion
from .loss_weighting import LOSS_WEIGHTINGS, check_loss_weighting
from .respace import SpacedDiffusion, space_timesteps
from .schedules import NOISE_SCHEDULES, get_named_beta_schedule
from .timesteps import uniform_timesteps

__all__ = [
    "create_diffusion",
    "GaussianDiffusion",
    "SpacedDiffusion",
    "AntUncertaintyWeighting",
    "timestep_cluster",
    "uniform_timesteps",
    "space_timesteps",
    "NOISE_SCHEDULES",
    "LOSS_WEIGHTINGS",
]


def create_diffusion(
    timestep_respacing="",
    noise_schedule: str = "linear",
    learn_sigma: bool = True,
    diffusion_steps: int = 1000,
    loss_weighting: str = "constant",
    snr_gamma: float = 5.0,
    p2_gamma: float = 1.0,
    p2_k: float = 1.0,
) -> GaussianDiffusion:
    """A GaussianDiffusion, or a SpacedDiffusion when ``timestep_respacing`` keeps fewer steps.

    ``loss_weighting="ant_uw"`` gives per-sample weight 1: the training loop applies
    AntUncertaintyWeighting to the per-sample ``loss`` itself.
    """
    if noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(
            f"noise_schedule={noise_schedule!r} is not known; allowed values: {', '.join(NOISE_SCHEDULES)}"
        )
    if not isinstance(learn_sigma, bool):
        raise ValueError(f"learn_sigma must be True or False, got {learn_sigma!r}")
    check_loss_weighting(loss_weighting, snr_gamma, p2_gamma, p2_k)
    betas = get_named_beta_schedule(noise_schedule, diffusion_steps)  # validates diffusion_steps
    if timestep_respacing is None:
        timestep_respacing = ""
    if isinstance(timestep_respacing, int) and not isinstance(timestep_respacing, bool):
        timestep_respacing = str(timestep_respacing)
    if not isinstance(timestep_respacing, str):
        raise ValueError(
            f"timestep_respacing must be a string such as '', '250', 'ddim50' or '10,15,20', "
            f"got {timestep_respacing!r}"
        )
    kwargs = dict(learn_sigma=learn_sigma, loss_weighting=loss_weighting,
                  snr_gamma=snr_gamma, p2_gamma=p2_gamma, p2_k=p2_k)
    use_timesteps = space_timesteps(diffusion_steps, timestep_respacing)
    if len(use_timesteps) == diffusion_steps:
        return GaussianDiffusion(betas, **kwargs)
    return SpacedDiffusion(use_timesteps, betas, **kwargs)
