"""File helpers: content hashes, and atomic writes of arrays (see dtr_scale.atomic)."""
from __future__ import annotations

import hashlib

import numpy as np

from ..atomic import atomic_write


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_savez(path: str, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_torch_save(path: str, obj) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
