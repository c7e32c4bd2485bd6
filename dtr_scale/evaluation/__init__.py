"""Distributed FID / sFID / Inception Score / Precision / Recall with ADM evaluator semantics.

Contract: `dtr_scale.evaluation.frechet_distance(mu1, sigma1, mu2, sigma2)` → float (float64).
The CLI is `python -m dtr_scale.evaluate`. Heavy pieces (torch-fidelity's Inception) load lazily.
"""
from .frechet import FrechetDistanceError, frechet_distance
from .inception_score import InceptionScoreAccumulator, inception_score
from .precision_recall import manifold_radii, precision_recall
from .statistics import FeatureMoments, GaussianStats, gaussian_from_features, reduce_moments

__all__ = [
    "FeatureMoments",
    "FrechetDistanceError",
    "GaussianStats",
    "InceptionScoreAccumulator",
    "frechet_distance",
    "gaussian_from_features",
    "inception_score",
    "manifold_radii",
    "precision_recall",
    "reduce_moments",
]
