"""`data.mode=global`: which sample sits at each global position, and who reads it.

The epoch stream
----------------
Epoch e is a permutation of all N samples that depends on (seed, e) only. The epochs are
concatenated into one stream; global position p is sample ``perm_{p // N}[p % N]``. Training step
s takes positions [s·B, (s+1)·B) for global batch size B. A step whose batch straddles an epoch
boundary simply takes the tail of epoch e and the head of epoch e+1: every epoch still holds each
sample exactly once, no sample is dropped or padded, and no step is shorter than B (with N < B a
batch may hold a sample twice, from two epochs).

The split
---------
With R ranks and A accumulation micro-batches per step, the local micro-batch is b = B/(R·A).
Rank r owns the contiguous slice [r·B/R, (r+1)·B/R) of each global batch, and its micro-batch m
is [r·B/R + m·b, r·B/R + (m+1)·b). The union over (r, m) is the whole global batch for every
(R, A), so the samples (and, below, all their random draws) of an optimizer step do not depend on
the cluster shape; only the floating-point order of the gradient reduction does.

Per-sample randomness
---------------------
Every random draw for a sample (the flip, the moments' ε, the timestep, the noise, label
dropout) comes from a generator seeded by (seed, global position, purpose) (randomness.py), so it
is the same whichever rank draws it. Two visits of a sample in two epochs get different draws.
"""
from __future__ import annotations

import numpy as np

from ..randomness import ORDER_TAG, derive_seed


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(derive_seed(seed, epoch, ORDER_TAG)).permutation(num_samples)


def micro_batch_positions(step: int, micro: int, *, global_batch: int, rank: int, world_size: int,
                          grad_accum: int) -> np.ndarray:
    """Global positions of micro-batch `micro` of `rank` in training step `step`."""
    per_rank = global_batch // world_size
    local = per_rank // grad_accum
    start = step * global_batch + rank * per_rank + micro * local
    return np.arange(start, start + local, dtype=np.int64)


class EpochOrder:
    """Global position -> sample index, keeping the last few epochs' permutations."""

    def __init__(self, num_samples: int, seed: int, keep: int = 2):
        self.num_samples, self.seed, self.keep = num_samples, seed, keep
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            while len(self._perms) >= self.keep:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = epoch_permutation(self.num_samples, self.seed, epoch)
        return self._perms[epoch]

    def samples(self, positions: np.ndarray) -> np.ndarray:
        epochs, within = np.divmod(positions, self.num_samples)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[within[sel]]
        return out
