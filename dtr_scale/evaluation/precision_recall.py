"""Improved Precision and Recall (Kynkäänniemi et al. 2019) with the ADM evaluator's definition.

Distances are SQUARED Euclidean distances between pool3 features (ADM compares squared
distances with squared radii; the ordering, hence the result, is the same as with distances).

- Manifold radius of a point = its (k+1)-th smallest squared distance to the points of its own
  set, the point itself included: the k-th nearest neighbour with self counted as the 0-th
  (ADM's `np.partition(...)[:, k]`). k = 3.
- precision = fraction of samples lying within (≤) the radius of at least one REFERENCE point.
- recall    = fraction of reference points lying within (≤) the radius of at least one SAMPLE
  (sample radii come from the samples' own k-NN).

ADM computes distance blocks in float16 and falls back to float32 when they overflow; here the
blocks are float32 (default) or float64, so a point sitting on a ball's boundary to within fp16
rounding can be classified differently. Otherwise the definitions are identical.

Distribution: the rows are cut into fixed blocks by GLOBAL index (`row_block` rows each) and the
blocks are dealt round-robin to ranks; each block is compared with every column block of the same
fixed size. A block therefore gives bit-identical results whichever rank computes it, and the
all-reduced radii and counts of 2 ranks equal those of 1 rank exactly.
"""
from __future__ import annotations

import torch

from .collectives import all_reduce_sum, world

DEFAULT_K = 3
DEFAULT_BLOCK = 10000


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise ||a_i − b_j||² via the Gram form, clamped at 0 against round-off."""
    aa = (a * a).sum(dim=1, keepdim=True)
    bb = (b * b).sum(dim=1)[None, :]
    return torch.clamp(aa - 2.0 * (a @ b.T) + bb, min=0.0)


def _my_row_blocks(n: int, row_block: int):
    rank, world_size = world()
    starts = range(0, n, row_block)
    return [(s, min(s + row_block, n)) for i, s in enumerate(starts) if i % world_size == rank]


def manifold_radii(features: torch.Tensor, k: int = DEFAULT_K, row_block: int = DEFAULT_BLOCK,
                   col_block: int = DEFAULT_BLOCK, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Squared k-NN radius of every row of `features` (self = 0-th neighbour); same on all ranks."""
    n = features.shape[0]
    if n < k + 1:
        raise ValueError(f"precision/recall with k={k} needs at least {k + 1} feature vectors, got {n}")
    feats = features.to(dtype)
    radii = torch.zeros(n, dtype=torch.float64, device=feats.device)
    for r0, r1 in _my_row_blocks(n, row_block):
        rows = feats[r0:r1]
        # The k+1 smallest distances seen so far; merging per column block keeps memory at
        # row_block × col_block while giving exactly the full-row order statistic.
        best = torch.full((r1 - r0, k + 1), float("inf"), dtype=dtype, device=feats.device)
        for c0 in range(0, n, col_block):
            d = squared_distances(rows, feats[c0 : c0 + col_block])
            best = torch.topk(torch.cat([best, d], dim=1), k + 1, dim=1, largest=False, sorted=True).values
        radii[r0:r1] = best[:, k].to(torch.float64)
    # Each entry is written by exactly one rank and is 0 elsewhere, so the sum is exact.
    return all_reduce_sum(radii)


def count_covered(points: torch.Tensor, centers: torch.Tensor, center_radii: torch.Tensor,
                  row_block: int = DEFAULT_BLOCK, col_block: int = DEFAULT_BLOCK,
                  dtype: torch.dtype = torch.float32) -> int:
    """How many `points` lie within (≤) the squared radius of at least one of `centers`."""
    pts, ctr = points.to(dtype), centers.to(dtype)
    rad = center_radii.to(device=ctr.device, dtype=dtype)
    local = 0
    for r0, r1 in _my_row_blocks(pts.shape[0], row_block):
        rows = pts[r0:r1]
        inside = torch.zeros(r1 - r0, dtype=torch.bool, device=rows.device)
        for c0 in range(0, ctr.shape[0], col_block):
            d = squared_distances(rows, ctr[c0 : c0 + col_block])
            inside |= (d <= rad[None, c0 : c0 + col_block]).any(dim=1)
        local += int(inside.sum().item())
    total = all_reduce_sum(torch.tensor([local], dtype=torch.int64))
    return int(total.item())


def precision_recall(reference: torch.Tensor, samples: torch.Tensor, k: int = DEFAULT_K,
                     row_block: int = DEFAULT_BLOCK, col_block: int = DEFAULT_BLOCK,
                     dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(precision, recall) of `samples` against `reference` (both full (N, D) feature sets).

    Every rank must pass the same full feature sets; the work is split by row blocks.
    """
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(
            f"reference features have {reference.shape[1]} dims, samples {samples.shape[1]}: "
            "they come from different feature extractors"
        )
    blocks = dict(row_block=row_block, col_block=col_block, dtype=dtype)
    ref_radii = manifold_radii(reference, k, **blocks)
    sample_radii = manifold_radii(samples, k, **blocks)
    precision = count_covered(samples, reference, ref_radii, **blocks) / samples.shape[0]
    recall = count_covered(reference, samples, sample_radii, **blocks) / reference.shape[0]
    return precision, recall
