"""Multi-head self-attention with interchangeable kernels.

Backends: `xformers` (memory-efficient kernels, CUDA only), `sdpa` (torch's
scaled_dot_product_attention: flash / efficient / math chosen by torch), `math` (explicit
softmax(QKᵀ/√d)V, the reference every other backend is tested against) and `auto` (xformers on
CUDA when importable, else sdpa). `auto` is resolved per call from the tensor's device, so a model
built on the CPU and moved to a GPU picks the fast kernel.

Parameter names (`qkv`, `proj`) follow the official DiT checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = ("auto", "xformers", "sdpa", "math")

try:  # xformers is an optional extra ([xformers]); it has no CPU kernels.
    import xformers.ops as _xops  # type: ignore

    HAS_XFORMERS = True
except Exception:  # noqa: BLE001 - any import failure means "not usable"
    _xops = None
    HAS_XFORMERS = False


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attention must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "xformers" if (HAS_XFORMERS and device.type == "cuda") else "sdpa"
    if backend == "xformers" and not HAS_XFORMERS:
        raise RuntimeError(
            "model.attention=xformers but xformers is not importable; "
            "install it with `pip install -e '.[xformers]'` or use model.attention=sdpa"
        )
    if backend == "xformers" and device.type != "cuda":
        raise RuntimeError("model.attention=xformers needs CUDA tensors; use sdpa or math on CPU")
    return backend


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """q, k, v: (B, L, H, D) -> (B, L, H, D)."""
    if backend == "xformers":
        return _xops.memory_efficient_attention(q, k, v)
    q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # (B, H, L, D)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"model.attention must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.unbind(dim=2)
        out = attend(q, k, v, resolve_backend(self.backend, x.device))
        return self.proj(out.reshape(B, L, C))
