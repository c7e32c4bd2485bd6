"""Interpolation paths x_t = α_t·x1 + σ_t·x0 between noise x0 (t = 0) and data x1 (t = 1).

The three paths of SiT (Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based Generative
Models with Scalable Interpolant Transformers"), with their time derivatives, and the terms every
conversion between velocity, score and noise needs. Each path also gives the probability-flow
split `v(x, t) = a_t·x + b_t·∇log p_t(x)` (a_t = α̇_t/α_t, b_t = a_t·σ_t² − σ_t·σ̇_t), which the
score-, noise- and SDE-samplers use; b_t is also the SDE diffusion "SBDM" and the loss weights.
"""
from __future__ import annotations

import math

import torch

PATHS = ("Linear", "GVP", "VP")


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) times as (N, 1, 1, ...) to broadcast against x."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


class LinearPath:
    """α_t = t, σ_t = 1 − t (rectified flow / the stochastic interpolant of SiT's default)."""

    def alpha(self, t):
        return t, 1

    def sigma(self, t):
        return 1 - t, -1

    def alpha_ratio(self, t):
        """α̇_t / α_t, written per path for numerical stability."""
        return 1 / t

    def score_split(self, x: torch.Tensor, t: torch.Tensor):
        """(a_t·x, b_t) with velocity = a_t·x + b_t·score; t is already broadcastable."""
        ratio = self.alpha_ratio(t)
        sigma_t, d_sigma_t = self.sigma(t)
        return ratio * x, ratio * sigma_t**2 - sigma_t * d_sigma_t

    def interpolate(self, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor):
        """(x_t, u_t): the point on the path and its time derivative (the velocity target)."""
        t = expand_like(t, x1)
        alpha_t, d_alpha_t = self.alpha(t)
        sigma_t, d_sigma_t = self.sigma(t)
        return alpha_t * x1 + sigma_t * x0, d_alpha_t * x1 + d_sigma_t * x0


class GVPPath(LinearPath):
    """Generalised variance preserving: α_t = sin(πt/2), σ_t = cos(πt/2) (α² + σ² = 1)."""

    def alpha(self, t):
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def alpha_ratio(self, t):
        return math.pi / (2 * torch.tan(t * math.pi / 2))


class VPPath(LinearPath):
    """The VP-SDE (score-based diffusion) path in SiT's time: β(s) linear from σ_min = 0.1 to
    σ_max = 20 with s = 1 − t, α_t = exp(−¼(1−t)²(σ_max−σ_min) − ½(1−t)σ_min), σ_t = √(1−α_t²)."""

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def log_alpha(self, t):
        return -0.25 * ((1 - t) ** 2) * (self.sigma_max - self.sigma_min) - 0.5 * (1 - t) * self.sigma_min

    def alpha_ratio(self, t):
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def alpha(self, t):
        alpha_t = torch.exp(self.log_alpha(t))
        return alpha_t, alpha_t * self.alpha_ratio(t)

    def sigma(self, t):
        alpha_sq = torch.exp(2 * self.log_alpha(t))
        sigma_t = torch.sqrt(1 - alpha_sq)
        return sigma_t, alpha_sq * (2 * self.alpha_ratio(t)) / (-2 * sigma_t)

    def score_split(self, x, t):
        beta_t = self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min)
        return 0.5 * beta_t * x, beta_t / 2


def make_path(path_type: str) -> LinearPath:
    classes = {"Linear": LinearPath, "GVP": GVPPath, "VP": VPPath}
    if path_type not in classes:
        raise ValueError(f"diffusion.flow.path={path_type!r}: expected one of {', '.join(PATHS)}")
    return classes[path_type]()
