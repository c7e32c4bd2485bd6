"""Synthetic latent shards in the real format, for loader tests and benchmarks.

Written with the same shard writer, manifest and sample index code as prep. Sample ids are recoverable from
the data: in `latent.npy` mode every value of sample i equals i (exact in fp16 up to 2048), and
in `moments.npy` mode the mean is i and the std is `std` (0 makes draws exactly i).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .manifest import FORMAT_NAME, FORMAT_VERSION, write_manifest
from .shard_format import LATENT_FIELD, MOMENTS_FIELD, encode_sample, sample_key, stored_shape
from .sample_index import write_prep_index
from .shard_writer import write_tar_shard


def write_synthetic_shards(out, *, counts: list[int], latent_shape=(4, 8, 8), num_classes: int = 10,
                           field: str = LATENT_FIELD, std: float = 0.0, scale_factor: float = 1.0,
                           random_values: bool = False, seed: int = 0) -> Path:
    """Write len(counts) shards (shard k holds counts[k] samples) and dataset.json into `out`.

    With `random_values`, means are N(0, 1) noise instead of the sample id (for benchmarks).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = stored_shape(field, tuple(latent_shape))
    rng = np.random.default_rng(seed)
    records, sample_id = [], 0
    for k, count in enumerate(counts):
        samples = []
        for j in range(count):
            if random_values:
                arr = rng.standard_normal(shape).astype(np.float16)
                if field == MOMENTS_FIELD:
                    arr[:, 1] = np.abs(arr[:, 1]) * 0.1
            else:
                arr = np.full(shape, sample_id, dtype=np.float16)
                if field == MOMENTS_FIELD:
                    arr[:, 1] = std
            samples.append(encode_sample(sample_key(k, j), field, arr, sample_id % num_classes))
            sample_id += 1
        records.append(write_tar_shard(out, k, samples))
    write_manifest(out, write_prep_index(out, {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "field": field,
        "latent_shape": list(latent_shape), "latent_dtype": "float16",
        "scale_factor": scale_factor, "shift_factor": 0.0, "num_classes": num_classes,
        "num_samples": sum(counts), "resolution": 0, "source": "synthetic", "vae": {"name": "none"},
        "shards": [{k: r[k] for k in ("name", "count", "bytes", "sha256")} for r in records]}, records))
    return out
