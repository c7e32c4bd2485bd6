"""Pick a feature extractor by name (the evaluate CLI's --extractor)."""
from __future__ import annotations

import torch

from .pixels import PixelFeatureExtractor


def build_extractor(name: str, device: torch.device | str = "cpu", inception_weights: str | None = None,
                    inception_sha256: str | None = None):
    """The extractor called `name` ('inception' or 'pixels')."""
    if name == "pixels":
        return PixelFeatureExtractor(device)
    if name == "inception":
        # Imported lazily: torch-fidelity is only needed for the Inception path.
        from .inception import DEFAULT_WEIGHTS_SHA256, InceptionFeatureExtractor

        return InceptionFeatureExtractor(
            inception_weights, inception_sha256 if inception_sha256 is not None else DEFAULT_WEIGHTS_SHA256, device
        )
    raise ValueError(f"unknown feature extractor {name!r}; choose 'inception' or 'pixels'")
