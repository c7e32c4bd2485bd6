"""Fréchet distance between two Gaussians (the FID / sFID formula).

    d² = ||μ1 − μ2||² + tr(Σ1) + tr(Σ2) − 2·tr((Σ1 Σ2)^½)

tr((Σ1 Σ2)^½) is the sum of square roots of the eigenvalues of Σ1 Σ2. That product is not
symmetric, so a symmetric eigen-solver must not be applied to it directly (it would silently read
only one triangle). Σ1 Σ2 is similar to the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, which has the same
eigenvalues; we form that matrix from an eigendecomposition of Σ1 and take its eigenvalues with
`eigvalsh`. Everything runs in float64: FID on 2048-d features subtracts traces of order 10² to get
answers of order 1, so float32 would lose most of the significant digits.
"""
from __future__ import annotations

import numpy as np


class FrechetDistanceError(ValueError):
    """The statistics are malformed or the result is not a finite number."""


def _as_stats(mu, sigma, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1:
        raise FrechetDistanceError(f"mu{which} must be a vector, got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise FrechetDistanceError(
            f"sigma{which} must be a {mu.shape[0]}x{mu.shape[0]} matrix to match mu{which}, "
            f"got shape {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise FrechetDistanceError(
            f"mu{which}/sigma{which} contain NaN or inf; the features they were computed from are "
            "broken (check the feature extractor's weights and the input images)"
        )
    return mu, sigma


def _symmetric_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric PSD matrix; round-off negatives are clipped to 0."""
    w, v = np.linalg.eigh(0.5 * (sigma + sigma.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ1 Σ2)^½) for symmetric PSD Σ1, Σ2, via the symmetric form Σ1^½ Σ2 Σ1^½."""
    root1 = _symmetric_sqrt(sigma1)
    m = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))
    # Eigenvalues of a PSD matrix are ≥ 0; tiny negatives are round-off, not information.
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    Raises FrechetDistanceError for mismatched shapes, non-finite input or a non-finite result.
    """
    mu1, sigma1 = _as_stats(mu1, sigma1, "1")
    mu2, sigma2 = _as_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise FrechetDistanceError(
            f"the two statistics have different feature dimensions ({mu1.shape[0]} vs "
            f"{mu2.shape[0]}): they were computed with different feature extractors"
        )
    diff = mu1 - mu2
    value = float(
        diff @ diff
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )
    if not np.isfinite(value):
        raise FrechetDistanceError(f"Fréchet distance is not finite ({value}); check the statistics")
    return value
