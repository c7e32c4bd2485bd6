"""Distributed evaluation: extract features per rank, reduce statistics, compute the metrics.

Rank r reads only its contiguous block of image indices (`rank_slice`) and accumulates:
- float64 moments of pool (and spatial) features, reduced by one all-reduce;
- per-split Inception Score sums keyed by GLOBAL image index (ADM's consecutive splits of 5000);
- its pool features, all-gathered in index order for precision/recall (which needs every
  pairwise distance; the distance blocks are then divided among ranks).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .collectives import all_gather_rows, broadcast_object, rank_slice, world
from .frechet import frechet_distance
from .inception_score import ADM_SPLIT_SIZE, InceptionScoreAccumulator
from .precision_recall import DEFAULT_BLOCK, DEFAULT_K, precision_recall
from .references import (
    ReferenceSet,
    cache_file,
    has_images,
    load_reference_cache,
    open_reference_images,
    read_adm_statistics,
    reference_fingerprint,
    save_reference_cache,
)
from .statistics import FeatureMoments, GaussianStats, reduce_moments


@dataclass
class Extraction:
    count: int
    pool: GaussianStats | None = None
    spatial: GaussianStats | None = None
    features: torch.Tensor | None = None  # all pool features, index order, on every rank
    inception_score: float | None = None
    seconds: float = 0.0


def extract(images, extractor, batch_size: int = 64, *, moments: bool = True, features: bool = True,
            inception_score: bool = False, is_split_size: int = ADM_SPLIT_SIZE, limit: int | None = None,
            desc: str = "features") -> Extraction:
    """Run `extractor` over `images` (first `limit` of them), split across ranks."""
    rank, world_size = world()
    n = len(images) if limit is None else min(limit, len(images))
    if n == 0:
        raise UserError(f"{desc}: no images to evaluate")
    start, stop = rank_slice(n, rank, world_size)
    dims = extractor.dims(images.shape[1:])
    dev = extractor.device
    acc = {}
    if moments:
        acc = {name: FeatureMoments(dims[name], dev) for name in ("pool", "spatial") if name in dims}
    is_acc = None
    if inception_score and "logits" in dims:
        is_acc = InceptionScoreAccumulator(dims["logits"], n, is_split_size, dev)
    local = []
    t0 = time.perf_counter()
    bar = tqdm(total=stop - start, disable=rank != 0, unit="img", dynamic_ncols=True,
               desc=f"{desc} (rank 0 of {world_size})" if world_size > 1 else desc)
    for b0 in range(start, stop, batch_size):
        b1 = min(b0 + batch_size, stop)
        out = extractor(images.read(b0, b1))
        for name, m in acc.items():
            m.update(out[name])
        if is_acc is not None:
            is_acc.update(out["logits"], b0)
        if features:
            local.append(out["pool"])
        bar.update(b1 - b0)
    bar.close()
    result = Extraction(count=n)
    if acc:
        reduced = dict(zip(acc, reduce_moments(list(acc.values()))))
        result.pool = reduced["pool"].gaussian()
        result.spatial = reduced["spatial"].gaussian() if "spatial" in reduced else None
    if is_acc is not None:
        result.inception_score = is_acc.result()
    if features:
        mine = torch.cat(local) if local else torch.zeros(0, dims["pool"], device=dev)
        result.features = all_gather_rows(mine.float())
    result.seconds = time.perf_counter() - t0
    return result


def prepare_reference(path: str, extractor, batch_size: int = 64, cache_dir: str | None = None,
                      want_features: bool = True) -> ReferenceSet:
    """Statistics (and P/R features) of the reference at `path`, from the cache when possible."""
    if not os.path.exists(path):
        raise UserError(f"reference {path} does not exist (expected an ADM reference batch .npz, "
                                "an .npz of images, a folder of images or a prep output folder)")
    rank, _ = world()
    cache_path = None
    # One rank hashes the (possibly GB-sized) reference; the others get its answer. The hash keys
    # the cache and names the reference in every report's protocol.
    fingerprint = broadcast_object(reference_fingerprint(path) if rank == 0 else None)
    if cache_dir:
        cache_path = cache_file(cache_dir, fingerprint, extractor.identity)
        cached = load_reference_cache(cache_path)
        if cached is not None and (cached.features is not None or not want_features):
            cached.info = {**cached.info, "cache": cache_path, "cache_hit": True, "sha256": fingerprint}
            return cached

    adm = read_adm_statistics(path)
    # ADM's statistics come from the TF Inception graph: usable only with the Inception extractor.
    use_adm = adm is not None and extractor.name == "inception-v3-tf2015" and adm["mu"].shape == (2048,)
    ref = ReferenceSet(source="adm-npz" if use_adm else "images")
    if use_adm:
        ref.pool = GaussianStats(adm["mu"], adm["sigma"], -1)
        if "mu_s" in adm and "sigma_s" in adm:
            ref.spatial = GaussianStats(adm["mu_s"], adm["sigma_s"], -1)
    elif adm is not None:
        ref.info["note"] = ("precomputed mu/sigma ignored: they are Inception statistics and this "
                            "run uses another extractor; statistics recomputed from arr_0")

    need_images = (not use_adm) or want_features
    if need_images and not has_images(path):
        if not use_adm:
            raise UserError(_no_usable_reference(path, adm, extractor.name))
        ref.info["note"] = "no arr_0 images in the reference: precision/recall not computed"
        need_images = False
    if need_images:
        images = open_reference_images(path)
        ext = extract(images, extractor, batch_size, moments=not use_adm, features=want_features,
                      desc="reference")
        if not use_adm:
            ref.pool, ref.spatial = ext.pool, ext.spatial
        if want_features:
            ref.features = ext.features.cpu().numpy()
        ref.info["count"] = ext.count
        ref.info["seconds"] = ext.seconds
    if cache_path is not None and rank == 0:
        save_reference_cache(cache_path, ref)
    ref.info = {**ref.info, "cache": cache_path, "cache_hit": False, "sha256": fingerprint}
    return ref


def _no_usable_reference(path: str, adm: dict | None, extractor_name: str) -> str:
    """Why a reference without images cannot be used, with the fix that applies."""
    if adm is None:
        return (f"--ref {path} holds neither ADM statistics (mu, sigma) nor images (arr_0); pass an ADM "
                "reference batch, an .npz with NHWC uint8 images under arr_0, an image folder or a prep output folder")
    if adm["mu"].shape != (2048,):
        return (f"--ref {path} holds statistics of {adm['mu'].shape[0]}-dim features, not Inception's 2048, "
                "and no images (arr_0): pass the images it was computed from")
    return (f"--ref {path} holds only Inception statistics (mu, sigma) and no images (arr_0), and "
            f"--extractor {'pixels' if extractor_name == 'pixels' else extractor_name} cannot use Inception "
            "statistics: pass --extractor inception, or a reference with images (arr_0, a folder, prep output)")


def check_same_images(samples_shape: tuple, ref_shape: tuple, samples_path: str, ref_path: str) -> None:
    """Pixel features compare pixel by pixel: both sets need one image size and channel count."""
    if tuple(samples_shape) != tuple(ref_shape):
        raise UserError(f"--samples {samples_path} holds images of shape {tuple(samples_shape)} (H, W, C), "
                        f"--ref {ref_path} of {tuple(ref_shape)}; --extractor pixels compares pixels, so "
                        "both must match (resize one set, or use --extractor inception, which resizes)")


def compute_metrics(samples: Extraction, ref: ReferenceSet, *, pr_k: int = DEFAULT_K,
                    pr_block: int = DEFAULT_BLOCK, pr_dtype: torch.dtype = torch.float32) -> dict:
    """FID, sFID, IS, precision, recall (None where the extractor/reference cannot give one)."""
    metrics = {"fid": None, "sfid": None, "inception_score": None, "precision": None, "recall": None}
    if samples.pool is not None and ref.pool is not None:
        metrics["fid"] = frechet_distance(samples.pool.mu, samples.pool.sigma, ref.pool.mu, ref.pool.sigma)
    if samples.spatial is not None and ref.spatial is not None:
        metrics["sfid"] = frechet_distance(samples.spatial.mu, samples.spatial.sigma,
                                           ref.spatial.mu, ref.spatial.sigma)
    metrics["inception_score"] = samples.inception_score
    if samples.features is not None and ref.features is not None:
        ref_feats = torch.from_numpy(np.asarray(ref.features)).to(samples.features.device)
        metrics["precision"], metrics["recall"] = precision_recall(
            ref_feats, samples.features, k=pr_k, row_block=pr_block, col_block=pr_block, dtype=pr_dtype)
    return metrics

