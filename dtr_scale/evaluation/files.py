"""File helpers: content hashes and atomic writes (temp file in the same folder, then os.replace)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str, obj) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def atomic_savez(path: str, **arrays) -> None:
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_torch_save(path: str, obj) -> None:
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))
