"""Rank 0 joins the shards into ADM's layout, `samples.npz` with `arr_0` (N, H, W, C) uint8 and
`arr_1` (N,) int64 labels, without ever holding all N images in memory.

An `.npz` is a zip of `.npy` members. We open the `arr_0.npy` member for writing (stored, not
compressed, zip64 so that 50k 256² images (~10 GB) fit), write the npy header for the final
shape, then append each shard's image bytes in index order: one shard in memory at a time.
The file is written under a temp name and renamed, so a reader never sees a partial sample set.
"""
from __future__ import annotations

import os
import zipfile
from typing import Sequence

import numpy as np

from dtr_scale.atomic import atomic_write, stale_temp_files

from .shards import ShardPlan, check_shard, shard_path


def _write_npy_header(f, shape: tuple, dtype: np.dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    np.lib.format.write_array_header_1_0(f, header)


def assemble_samples(out_dir: str, plan: ShardPlan, out_name: str = "samples.npz") -> str:
    """Stream every shard of `plan` into `out_dir/out_name`; returns its path."""
    paths = [shard_path(out_dir, j) for j in range(plan.num_shards)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} sample shards are missing (first: "
                                f"{missing[0]}); rerun the same sample command to make them")
    shapes = {check_shard(p, plan.indices(j)) for j, p in enumerate(paths)}
    if len(shapes) != 1:
        raise ValueError(f"sample shards in {out_dir} disagree on the image shape: {sorted(shapes)}")
    (image_shape,) = shapes
    final = os.path.join(out_dir, out_name)
    for stale in stale_temp_files(final):
        os.remove(stale)  # left by an assembly that was killed

    def write(raw):
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            _stream_member(zf, "arr_0.npy", (plan.num_samples, *image_shape), np.uint8, paths, "images")
            _stream_member(zf, "arr_1.npy", (plan.num_samples,), np.int64, paths, "labels")

    atomic_write(final, write)
    return final


def _stream_member(zf: zipfile.ZipFile, name: str, shape: tuple, dtype, paths: Sequence[str], key: str) -> None:
    with zf.open(name, "w", force_zip64=True) as member:
        _write_npy_header(member, shape, dtype)
        for path in paths:
            with np.load(path) as shard:
                block = np.ascontiguousarray(shard[key], dtype=dtype)
            member.write(block.data)
