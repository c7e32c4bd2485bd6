"""Multi-head self-attention with interchangeable kernels.

Backends: `xformers` (memory-efficient kernels, CUDA only), `sdpa` (torch's
scaled_dot_product_attention: flash / efficient / math chosen by torch), `math` (explicit
softmax(QKᵀ/√d)V, the reference every other backend is tested against) and `auto` (xformers on
CUDA when importable, else sdpa). `auto` is resolved per call from the tensor's device, so a model
built on the CPU and moved to a GPU picks the fast kernel.

Parameter names (`qkv`, `proj`) follow the official DiT checkpoints. The modern block's qk-norm
(`q_norm`, `k_norm`, LightningDiT's names) and 2-D RoPE act on q and k before the backend is
called, so every backend computes the same attention with them.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .rope2d import apply_rope

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
    def __init__(self, dim: int, num_heads: int, backend: str = "auto", head_norm: nn.Module | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"model.attention must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        if head_norm is not None:  # qk-norm: one norm for q, one for k, over each head's channels
            self.q_norm = head_norm
            self.k_norm = copy.deepcopy(head_norm)
        self.qk_norm = head_norm is not None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.unbind(dim=2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = attend(q, k, v, resolve_backend(self.backend, x.device))
        return self.proj(out.reshape(B, L, C))
