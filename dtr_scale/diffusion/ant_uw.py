"""ANT uncertainty weighting (Go et al., "Addressing Negative Transfer in Diffusion Models", 2023).

Timesteps 0..T-1 are split into K contiguous clusters of (near-)equal width; cluster of t is
floor(t*K/T). Each cluster k has a learned log-variance s_k (Kendall et al. 2018), and the
training objective over the clusters present in the batch is

    total = Σ_k ½ (exp(-s_k) · L_k / K + s_k),

L_k being the mean per-sample loss over the batch samples of cluster k. A cluster absent from a
batch contributes nothing (neither its loss nor its s_k regulariser) that step.

Timesteps are stratified: each cluster gets ⌊B/K⌋ or ⌈B/K⌉ of a batch of B, the clusters that
get the extra sample drawn at random, so every batch size works and, over many batches, every
cluster is drawn equally often.
"""

from __future__ import annotations

import torch
from torch import nn


def timestep_cluster(t: torch.Tensor, num_timesteps: int = 1000, num_clusters: int = 8) -> torch.Tensor:
    """Cluster index floor(t*K/T) of each timestep (long tensor, same shape as t)."""
    return torch.div(t.long() * num_clusters, num_timesteps, rounding_mode="floor")


def cluster_bounds(num_timesteps: int, num_clusters: int) -> torch.Tensor:
    """(K+1,) long tensor of edges: cluster k holds start_k <= t < start_{k+1}.

    t is in cluster k iff k <= tK/T < k+1, i.e. ceil(kT/K) <= t < ceil((k+1)T/K).
    """
    k = torch.arange(num_clusters + 1, dtype=torch.long)
    return -torch.div(-k * num_timesteps, num_clusters, rounding_mode="floor")


class AntUncertaintyWeighting(nn.Module):
    """Learned per-cluster loss weights; also the stratified timestep sampler that goes with them."""

    def __init__(self, num_timesteps: int = 1000, num_clusters: int = 8):
        super().__init__()
        if num_clusters < 1 or num_timesteps < num_clusters:
            raise ValueError(
                f"AntUncertaintyWeighting needs 1 <= num_clusters <= num_timesteps, "
                f"got num_clusters={num_clusters}, num_timesteps={num_timesteps}"
            )
        self.num_timesteps = int(num_timesteps)
        self.num_clusters = int(num_clusters)
        # s_k = log σ_k²; init 0 means all clusters start with weight exp(0)/K.
        self.log_vars = nn.Parameter(torch.zeros(self.num_clusters))
        self.register_buffer("bounds", cluster_bounds(self.num_timesteps, self.num_clusters),
                             persistent=False)

    def param_groups(self, lr: float = 0.025) -> list[dict]:
        """A one-element list of optimizer param groups: s_k with its own LR and no weight decay
        (decay would pull every s_k toward 0, i.e. back toward equal weights)."""
        return [{"params": [self.log_vars], "lr": lr, "weight_decay": 0.0}]

    def sample_timesteps(self, batch_size: int, device=None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch_size,) long tensor of timesteps, stratified across the K clusters."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        draw_device = generator.device if generator is not None else torch.device("cpu")
        k = self.num_clusters
        base, extra = divmod(batch_size, k)
        counts = torch.full((k,), base, dtype=torch.long)
        if extra:
            counts[torch.randperm(k, generator=generator, device=draw_device)[:extra].cpu()] += 1
        clusters = torch.repeat_interleave(torch.arange(k), counts).to(draw_device)
        bounds = self.bounds.to(draw_device)
        start = bounds[clusters]
        width = bounds[clusters + 1] - start
        u = torch.rand(batch_size, generator=generator, device=draw_device, dtype=torch.float64)
        t = start + torch.minimum((u * width).long(), width - 1)
        # Shuffle so that the cluster order carries no correlation with the batch order of the data.
        t = t[torch.randperm(batch_size, generator=generator, device=draw_device)]
        return t.to(device) if device is not None else t

    def cluster_losses(self, per_sample_loss: torch.Tensor, t: torch.Tensor):
        """(L_k, n_k): mean loss and sample count per cluster; L_k = 0 where n_k = 0."""
        if per_sample_loss.dim() != 1 or per_sample_loss.shape != t.shape:
            raise ValueError(
                f"per_sample_loss must have shape (N,) matching t {tuple(t.shape)}, "
                f"got {tuple(per_sample_loss.shape)}"
            )
        clusters = timestep_cluster(t, self.num_timesteps, self.num_clusters).to(per_sample_loss.device)
        if clusters.numel() and (clusters.min() < 0 or clusters.max() >= self.num_clusters):
            raise ValueError(f"timesteps must lie in 0..{self.num_timesteps - 1}")
        dtype = torch.promote_types(per_sample_loss.dtype, self.log_vars.dtype)
        sums = torch.zeros(self.num_clusters, dtype=dtype, device=per_sample_loss.device)
        sums = sums.index_add(0, clusters, per_sample_loss.to(dtype))
        counts = torch.bincount(clusters, minlength=self.num_clusters)
        return sums / counts.clamp(min=1).to(dtype), counts

    def forward(self, per_sample_loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Scalar Σ_{k present} ½(exp(-s_k)·L_k/K + s_k)."""
        means, counts = self.cluster_losses(per_sample_loss, t)
        s = self.log_vars.to(means.dtype)
        terms = 0.5 * (torch.exp(-s) * means / self.num_clusters + s)
        # torch.where (not indexing) keeps a zero gradient, not a missing one, for absent clusters.
        return torch.where(counts > 0, terms, torch.zeros_like(terms)).sum()
