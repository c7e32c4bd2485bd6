"""Pixel-space "features": the flattened image in [0, 1].

For tiny data (8×8 or 16×16 digits) an ImageNet classifier's features say little, while the
Fréchet distance and P/R between raw pixel distributions are meaningful and cheap. This extractor
gives only 'pool' features, so sFID and Inception Score are not reported with it.
"""
from __future__ import annotations

import numpy as np
import torch


class PixelFeatureExtractor:
    name = "pixels"

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def dims(self, image_shape: tuple) -> dict[str, int]:
        return {"pool": int(np.prod(image_shape))}

    @property
    def identity(self) -> dict:
        return {"name": self.name, "features": {"pool": "flattened HWC pixels / 255"}}

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images, got {x.dtype}")
        return {"pool": x.reshape(x.shape[0], -1).to(torch.float32) / 255.0}

