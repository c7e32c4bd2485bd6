"""Sample shards on disk: which indices a shard holds, who makes it, and how it is written.

Shard j holds the consecutive indices [j·S, min((j+1)·S, N)) and is made by rank j % world_size.
Each shard is one uncompressed `.npz` (`images` (n, H, W, C) uint8, `labels` (n,) int64,
`indices` (n,) int64) written to a temp name and renamed when complete, so a file named
`shard-XXXXXX.npz` is always whole: a rerun skips it (resume), and a killed rank leaves at most
a temp file, which the rerun deletes and redoes.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from dtr_scale.atomic import atomic_write, stale_temp_files

SHARD_DIR = "shards"


@dataclass(frozen=True)
class ShardPlan:
    num_samples: int
    shard_size: int

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def indices(self, shard: int) -> range:
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.num_samples))

    def shards_of_rank(self, rank: int, world_size: int) -> list[int]:
        return list(range(rank, self.num_shards, world_size))


def shard_path(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, SHARD_DIR, f"shard-{shard:06d}.npz")


def remove_stale_temp(out_dir: str, shard: int) -> None:
    """Temp files of `shard` left by a killed run (only this shard's owner calls this)."""
    for stale in stale_temp_files(shard_path(out_dir, shard)):
        os.remove(stale)


def write_shard(path: str, images: np.ndarray, labels: np.ndarray, indices) -> None:
    """Atomic: temp file beside `path`, fsync, rename."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"shard images must be uint8 (n, H, W, C), got {images.dtype} {images.shape}")
    labels, indices = np.asarray(labels, np.int64), np.asarray(list(indices), np.int64)
    atomic_write(path, lambda f: np.savez(f, images=images, labels=labels, indices=indices))


def npy_member_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of one .npy member without reading its data."""
    with zf.open(name) as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    if fortran:
        raise ValueError(f"{zf.filename}:{name} is Fortran-ordered")
    return tuple(shape), dtype


def check_shard(path: str, expected_indices: range) -> tuple[int, int, int]:
    """Validate a finished shard's indices and image header; return its image shape (H, W, C)."""
    try:
        with zipfile.ZipFile(path) as zf:
            shape, dtype = npy_member_header(zf, "images.npy")
        indices = np.load(path)["indices"]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable sample shard ({exc}); delete it and rerun to "
                         "regenerate it") from exc
    if dtype != np.uint8 or len(shape) != 4:
        raise ValueError(f"{path}: images are {dtype} {shape}, expected uint8 (n, H, W, C)")
    if indices.tolist() != list(expected_indices) or shape[0] != len(expected_indices):
        raise ValueError(f"{path} holds indices {indices[:3].tolist()}… ({shape[0]} images), expected "
                         f"{expected_indices.start}..{expected_indices.stop - 1}; it belongs to another "
                         "run layout (shard_size/num_samples): use a fresh --out directory")
    return shape[1:]
