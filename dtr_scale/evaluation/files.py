"""File helpers: atomic writes of arrays (see dtr_scale.atomic)."""
from __future__ import annotations

import numpy as np

from ..atomic import atomic_write


def atomic_savez(path: str, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_torch_save(path: str, obj) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
