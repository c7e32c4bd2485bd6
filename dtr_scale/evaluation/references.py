"""Reference sets: ADM reference batches, image sets, and a cache of their statistics.

An ADM reference batch (`VIRTUAL_imagenet256_labeled.npz` and friends) holds precomputed
Inception statistics `mu, sigma` (pool_3) and `mu_s, sigma_s` (mixed_6/conv spatial), plus
`arr_0`: 10,000 NHWC uint8 images whose features define the P/R reference manifold. Any other
reference (an .npz with only `arr_0`, a folder of images or of .npz files) is passed through the
extractor once; its statistics and pool features are then cached in a file keyed by the
reference's content hash and the extractor identity (name + weights hash), written atomically.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .image_sources import list_image_files, open_images
from ..file_hash import file_sha256
from .files import atomic_savez
from .statistics import GaussianStats

CACHE_FORMAT_VERSION = 1
ADM_STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


@dataclass
class ReferenceSet:
    """What the metrics need from a reference; None where the reference cannot provide it."""

    pool: GaussianStats | None = None
    spatial: GaussianStats | None = None
    features: np.ndarray | None = None  # pool features (N, D) float32 for precision/recall
    source: str = ""
    info: dict = field(default_factory=dict)


def default_cache_dir() -> str:
    root = os.environ.get("DTR_SCALE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dtr_scale"))
    return os.path.join(root, "reference_stats")


def read_adm_statistics(path: str) -> dict[str, np.ndarray] | None:
    """The precomputed statistics of an ADM-layout .npz (`mu`, `sigma`, optional `mu_s`, `sigma_s`)."""
    if not (os.path.isfile(path) and path.endswith(".npz")):
        return None
    with zipfile.ZipFile(path) as zf:
        members = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    if not {"mu", "sigma"} <= members:
        return None
    with np.load(path) as npz:  # only the small statistics members are read
        return {k: np.asarray(npz[k], dtype=np.float64) for k in ADM_STAT_KEYS if k in members}


def has_images(path: str) -> bool:
    if os.path.isfile(path):
        with zipfile.ZipFile(path) as zf:
            return "arr_0.npy" in zf.namelist()
    return os.path.isdir(path)


def is_latent_shards(path: str) -> bool:
    """A folder written by the data pipeline: `dataset.json` + WebDataset `.tar` shards."""
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "dataset.json")) or bool(glob.glob(os.path.join(path, "*.tar")))
    )


def decode_latent_shards_reference(path: str):
    """Images behind a prep output folder: pixel-mode shards are read back exactly; VAE-mode
    shards are decoded with the VAE their manifest names."""
    from .latent_shards import open_latent_shards

    return open_latent_shards(path)


def open_reference_images(path: str):
    if is_latent_shards(path):
        return decode_latent_shards_reference(path)
    return open_images(path)


def reference_fingerprint(path: str) -> str:
    """sha256 of the reference's bytes (a folder: of its sorted relative names and file hashes)."""
    if os.path.isfile(path):
        return file_sha256(path)
    if is_latent_shards(path):
        files = sorted(glob.glob(os.path.join(path, "dataset.json")) + glob.glob(os.path.join(path, "*.tar")))
    else:
        files = sorted(glob.glob(os.path.join(path, "*.npz"))) or list_image_files(path)
    h = hashlib.sha256()
    for f in files:
        h.update(os.path.relpath(f, path).encode())
        h.update(bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


def cache_file(cache_dir: str, fingerprint: str, extractor_identity: dict) -> str:
    # Identity without the weights' location: the same file elsewhere gives the same features.
    ident = {k: v for k, v in extractor_identity.items() if k != "weights_path"}
    key = json.dumps({"ref": fingerprint, "extractor": ident, "v": CACHE_FORMAT_VERSION}, sort_keys=True)
    return os.path.join(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")


def save_reference_cache(path: str, ref: ReferenceSet) -> None:
    arrays = {"source": np.array(ref.source), "info": np.array(json.dumps(ref.info))}
    for name, stats in (("pool", ref.pool), ("spatial", ref.spatial)):
        if stats is not None:
            arrays[f"{name}_mu"], arrays[f"{name}_sigma"] = stats.mu, stats.sigma
            arrays[f"{name}_count"] = np.array(stats.count)
    if ref.features is not None:
        arrays["features"] = ref.features
    atomic_savez(path, **arrays)


def load_reference_cache(path: str) -> ReferenceSet | None:
    if not os.path.isfile(path):
        return None
    with np.load(path) as z:
        def stats(name):
            if f"{name}_mu" not in z:
                return None
            return GaussianStats(z[f"{name}_mu"], z[f"{name}_sigma"], int(z[f"{name}_count"]))

        return ReferenceSet(
            pool=stats("pool"),
            spatial=stats("spatial"),
            features=z["features"] if "features" in z else None,
            source=str(z["source"]),
            info=json.loads(str(z["info"])),
        )
