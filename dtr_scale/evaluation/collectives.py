"""The few collectives the evaluator needs, each a no-op in a single process.

NCCL only moves CUDA tensors and gloo only CPU tensors, so every helper stages its tensor on the
process group's device and returns the result on the caller's device.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world_size) of the initialised group, (0, 1) otherwise."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def comm_device() -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (a new tensor on t's device; `t` itself is left alone)."""
    if not is_distributed():
        return t.clone()
    staged = t.detach().to(comm_device(), copy=True)
    dist.all_reduce(staged, op=dist.ReduceOp.SUM)
    return staged.to(t.device)


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (ranks may hold different row counts).

    Rank order is the global index order because the evaluator gives each rank a contiguous
    block of images (see `rank_slice`).
    """
    if not is_distributed():
        return t
    _, world_size = world()
    dev = comm_device()
    n_local = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    counts = [torch.zeros_like(n_local) for _ in range(world_size)]
    dist.all_gather(counts, n_local)
    counts = [int(c.item()) for c in counts]
    width = max(counts)
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)


def broadcast_object(obj):
    """Rank 0's value of `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=comm_device())
    return box[0]


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block [start, stop) of n items for `rank`; sizes differ by at most one.

    Contiguous blocks (rather than a stride) keep each rank's reads sequential, which matters
    for compressed .npz members that can only be streamed forward.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def to_numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()
