"""PNG output: sample grids (training logs, quick looks) and one PNG per sample index."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dtr_scale.atomic import atomic_write


def _pil_image(array: np.ndarray):
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]  # PIL's "L" mode wants (H, W)
    return Image.fromarray(np.ascontiguousarray(array))


def _atomic_png(image, path: str) -> None:
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def grid_array(images: np.ndarray, nrow: int = 8, labels: Sequence[int] | None = None,
               padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (H', W', C) image.

    Without labels: row-major, `nrow` images per row. With labels: one row per class (classes in
    ascending order, each row holding that class's images in the given order), so class-balanced
    samples (labels=balanced) show one class per row; `nrow` then caps the images per row.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images shaped (N, H, W, C), got {images.dtype} {images.shape}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, h, w, c = images.shape
    if labels is None:
        rows = [list(range(s, min(s + nrow, n))) for s in range(0, n, nrow)]
    else:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} images")
        rows = [list(np.flatnonzero(labels == k)[:nrow]) for k in np.unique(labels)]
    ncol = max((len(r) for r in rows), default=0)
    out = np.full((len(rows) * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, np.uint8)
    for r, members in enumerate(rows):
        for col, i in enumerate(members):
            top, left = padding + r * (h + padding), padding + col * (w + padding)
            out[top:top + h, left:left + w] = images[i]
    return out


def save_grid(images: np.ndarray, path: str, nrow: int = 8, labels: Sequence[int] | None = None,
              upscale: int = 1) -> str:
    """Write a grid PNG atomically (see grid_array); `upscale` enlarges tiny images (nearest)."""
    grid = grid_array(images, nrow=nrow, labels=labels)
    if upscale > 1:
        grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_png(_pil_image(grid), path)
    return path


def save_pngs(images: np.ndarray, indices: Sequence[int], folder: str) -> None:
    """One PNG per sample, named by its global index (`000123.png`), each written atomically."""
    os.makedirs(folder, exist_ok=True)
    for image, index in zip(images, indices):
        _atomic_png(_pil_image(image), os.path.join(folder, f"{int(index):06d}.png"))
