"""Inception Score with the ADM evaluator's split semantics.

ADM (guided-diffusion evaluations/evaluator.py) takes p = softmax(pool3 · W) (the Inception
classifier WITHOUT its bias: torch-fidelity's 'logits_unbiased'), cuts the samples in file order
into consecutive splits of 5000 (no shuffle; the last split may be shorter), and for each split s

    IS_s = exp( mean_i KL(p_i || p̄_s) ),   p̄_s = mean of p_i over the split,

then reports the mean of IS_s over splits (no standard deviation).

Distributed form: mean_i KL(p_i || p̄_s) = (1/n_s) Σ_i Σ_c p_ic log p_ic − Σ_c p̄_sc log p̄_sc.
So per split only Σ_i p_i (a C-vector), Σ_i Σ_c p_ic log p_ic and n_s are needed. Each rank adds
its rows into the split its GLOBAL index falls in and one all-reduce combines them: the split
semantics stay exact however the images are divided among ranks, without gathering the logits.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .collectives import all_reduce_sum

ADM_SPLIT_SIZE = 5000


def _softmax64(logits) -> torch.Tensor:
    return torch.softmax(torch.as_tensor(logits).to(torch.float64), dim=1)


def _plogp_rowsum(p: torch.Tensor) -> torch.Tensor:
    # xlogy gives 0·log 0 = 0 (a class with underflowed probability contributes nothing).
    return torch.special.xlogy(p, p).sum(dim=1)


def inception_score(logits, split_size: int = ADM_SPLIT_SIZE) -> float:
    """Single-process IS of (N, C) logits in index order, exactly as ADM splits them."""
    p = _softmax64(logits)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"expected (N, C) logits with N > 0, got {tuple(p.shape)}")
    scores = []
    for start in range(0, p.shape[0], split_size):
        part = p[start : start + split_size]
        mean = part.mean(dim=0, keepdim=True)
        kl = (part * (torch.log(part) - torch.log(mean))).nan_to_num(0.0).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores))


class InceptionScoreAccumulator:
    """Per-split sufficient statistics for IS, filled batch by batch on each rank."""

    def __init__(self, num_classes: int, total: int, split_size: int = ADM_SPLIT_SIZE,
                 device: torch.device | str = "cpu"):
        if total <= 0:
            raise ValueError("Inception Score needs at least one image")
        self.num_classes = num_classes
        self.total = total
        self.split_size = split_size
        self.num_splits = -(-total // split_size)
        # Row s: [Σ p (C values), Σ p log p, count].
        self.table = torch.zeros(self.num_splits, num_classes + 2, dtype=torch.float64, device=device)

    def update(self, logits, start_index: int) -> None:
        """Add rows whose global indices are start_index, start_index + 1, ..."""
        p = _softmax64(logits).to(self.table.device)
        n = p.shape[0]
        if start_index < 0 or start_index + n > self.total:
            raise ValueError(
                f"rows {start_index}..{start_index + n} fall outside the {self.total} images "
                "this accumulator was sized for"
            )
        split = torch.arange(start_index, start_index + n, device=p.device) // self.split_size
        rows = torch.cat([p, _plogp_rowsum(p)[:, None], torch.ones(n, 1, dtype=p.dtype, device=p.device)], 1)
        self.table.index_add_(0, split, rows)

    def result(self) -> float:
        """IS over all ranks' rows (one all-reduce when distributed)."""
        table = all_reduce_sum(self.table)
        counts = table[:, -1]
        if int(counts.sum().item()) != self.total:
            raise RuntimeError(
                f"Inception Score saw {int(counts.sum().item())} rows but expected {self.total}: "
                "some images were skipped or counted twice"
            )
        mean_p = table[:, : self.num_classes] / counts[:, None]
        kl = table[:, self.num_classes] / counts - torch.special.xlogy(mean_p, mean_p).sum(dim=1)
        return float(torch.exp(kl).mean().item())
