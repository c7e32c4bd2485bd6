"""Image preprocessing before encoding: ADM's centre crop and scaling to [-1, 1]."""
from __future__ import annotations

import numpy as np
from PIL import Image


def center_crop_arr(image: Image.Image, resolution: int) -> np.ndarray:
    """ADM / DiT centre crop (guided-diffusion `center_crop_arr`), returned as uint8 HWC (or HW).

    1. While the short side is at least twice the target, halve the image with BOX filtering
       (cheap, alias-free pre-shrink for large photos);
    2. BICUBIC-resize so the short side equals `resolution` (this also upsamples small images,
       e.g. the 8x8 digits);
    3. cut the central `resolution x resolution` square.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    while min(*image.size) >= 2 * resolution:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = resolution / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top = (arr.shape[0] - resolution) // 2
    left = (arr.shape[1] - resolution) // 2
    return arr[top: top + resolution, left: left + resolution]


def to_unit_range(arr: np.ndarray) -> np.ndarray:
    """uint8 HWC/HW -> float32 CHW in [-1, 1] (x / 127.5 - 1, as DiT's Normalize(0.5, 0.5))."""
    x = arr.astype(np.float32) / 127.5 - 1.0
    if x.ndim == 2:
        return x[None]
    return np.ascontiguousarray(x.transpose(2, 0, 1))
