"""Per-sample weights on the ε-prediction MSE term, as a float64 table over timesteps.

SNR_t = ᾱ_t / (1 - ᾱ_t).

- ``constant``: w_t = 1 (DiT / ADM).
- ``min_snr``: Min-SNR-γ (Hang et al. 2023), ε-prediction form w_t = min(SNR_t, γ) / SNR_t.
  (The x0-prediction form is min(SNR_t, γ); dividing by SNR_t converts it, because
  ||x0 - x̂0||² = ||ε - ε̂||² / SNR_t.)
- ``p2``: perception-prioritised weighting (Choi et al. 2022), w_t = 1 / (k + SNR_t)^γ.
- ``ant_uw``: w_t = 1 here; the training loop applies AntUncertaintyWeighting on top of the
  per-sample loss.

The table is indexed by the diffusion's own timestep index. Under respacing we use the
respaced process's ᾱ at that index. That is the same number as the original ᾱ at the mapped
original timestep: respacing keeps ᾱ at the kept steps and only recomputes the β between them
(see respace.py), so the choice only matters for documentation, not for the values.

Weights are returned with shape (N,) and multiplied with the per-sample mean-flat MSE of
shape (N,): element-wise, never an (N, 1, ...) tensor that would broadcast into an (N, N) matrix.
"""

from __future__ import annotations

import numpy as np

LOSS_WEIGHTINGS = ("constant", "min_snr", "p2", "ant_uw")


def snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Signal-to-noise ratio ᾱ/(1-ᾱ) per timestep (float64)."""
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    return alphas_cumprod / (1.0 - alphas_cumprod)


def loss_weight_table(
    kind: str,
    alphas_cumprod: np.ndarray,
    snr_gamma: float = 5.0,
    p2_gamma: float = 1.0,
    p2_k: float = 1.0,
) -> np.ndarray:
    """Weight for every timestep index (float64, same shape as alphas_cumprod)."""
    check_loss_weighting(kind, snr_gamma, p2_gamma, p2_k)
    ratio = snr(alphas_cumprod)
    if kind in ("constant", "ant_uw"):
        return np.ones_like(ratio)
    if kind == "min_snr":
        return np.minimum(ratio, snr_gamma) / ratio
    return 1.0 / (p2_k + ratio) ** p2_gamma  # p2


def check_loss_weighting(kind: str, snr_gamma: float, p2_gamma: float, p2_k: float) -> None:
    """Raise ValueError naming the argument for an unknown kind or an out-of-range parameter."""
    if kind not in LOSS_WEIGHTINGS:
        raise ValueError(
            f"loss_weighting={kind!r} is not known; allowed values: {', '.join(LOSS_WEIGHTINGS)}"
        )
    if kind == "min_snr" and not snr_gamma > 0:
        raise ValueError(f"snr_gamma must be > 0 for loss_weighting='min_snr', got {snr_gamma!r}")
    if kind == "p2":
        if not p2_gamma >= 0:
            raise ValueError(f"p2_gamma must be >= 0 for loss_weighting='p2', got {p2_gamma!r}")
        if not p2_k >= 0:
            raise ValueError(f"p2_k must be >= 0 for loss_weighting='p2', got {p2_k!r}")
