"""The modern block options (LightningDiT, Yao et al. 2025) and the layers each one picks.

All four default to the official DiT block, which then builds exactly the modules (and the
parameter names) it always had, so official DiT checkpoints and earlier runs load unchanged:

    qk_norm   False      | True: normalise q and k per head before attention (after the qkv
                           projection, before RoPE), with a norm of the `norm` kind
    norm      layernorm  | rmsnorm: block, final-layer and qk norms are RMSNorm (learned scale)
    mlp       gelu       | swiglu: silu(x W1) * (x W2) then W3, hidden width int(2/3 · 4C)
    pos_embed sincos     | rope2d: 2-D rotary embedding of q and k in every attention, ON TOP of
                           the fixed sin-cos table added to the tokens (as LightningDiT does)

Parameter names follow LightningDiT's (`attn.q_norm`, `mlp.w12`, `mlp.w3`, `norm1.weight`), so
its state dicts map onto ours by dropping its RoPE buffers and its sigma channels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from torch import nn

from .rmsnorm import RMSNorm
from .swiglu import SwiGLU, swiglu_hidden

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POS_EMBEDS = ("sincos", "rope2d")


@dataclass(frozen=True)
class BlockOptions:
    qk_norm: bool = False
    norm: str = "layernorm"
    mlp: str = "gelu"
    pos_embed: str = "sincos"

    def non_default(self) -> dict:
        """The options that differ from the official block: what metadata and fingerprints
        record, so that the records of a default model stay exactly as they were."""
        default = BlockOptions()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, hidden_size: int, num_heads: int) -> None:
        """ValueError naming the `model.*` key; config validation turns it into a ConfigError."""
        for key, value, allowed in (("norm", self.norm, NORMS), ("mlp", self.mlp, MLPS),
                                    ("pos_embed", self.pos_embed, POS_EMBEDS)):
            if value not in allowed:
                raise ValueError(f"model.{key}: got {value!r}; allowed: {', '.join(allowed)}")
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"model.qk_norm: expected true or false, got {self.qk_norm!r}")
        head_dim = hidden_size // num_heads
        # The rotary layout splits each head in two halves (rows, columns) of rotated pairs.
        if self.pos_embed == "rope2d" and head_dim % 4:
            raise ValueError(f"model.pos_embed: rope2d needs a head size divisible by 4, the model has "
                             f"{hidden_size}/{num_heads} = {head_dim}; use pos_embed=sincos or another size")


PLAIN_BLOCK = BlockOptions()  # the official DiT block (frozen, so one shared default is safe)
BLOCK_KEYS = tuple(f.name for f in fields(BlockOptions))  # also the `model.*` config keys


def block_options(section) -> BlockOptions:
    """The options of a config's `model` section (or any object with the same attributes)."""
    return BlockOptions(**{k: getattr(section, k) for k in BLOCK_KEYS})


def block_norm(options: BlockOptions, hidden_size: int) -> nn.Module:
    """The pre-attention / pre-MLP / final norm: DiT's LayerNorm has no affine parameters (the
    adaLN modulation scales and shifts); LightningDiT's RMSNorm keeps its learned scale."""
    if options.norm == "rmsnorm":
        return RMSNorm(hidden_size)
    return nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)


def head_norm(options: BlockOptions, head_dim: int) -> nn.Module:
    """qk-norm over one head: RMSNorm with rmsnorm, else torch's default LayerNorm (affine,
    eps 1e-5), both as LightningDiT builds them."""
    if options.norm == "rmsnorm":
        return RMSNorm(head_dim)
    return nn.LayerNorm(head_dim)


def block_mlp(options: BlockOptions, hidden_size: int, mlp_ratio: float, gelu_mlp: type) -> nn.Module:
    width = int(hidden_size * mlp_ratio)
    if options.mlp == "swiglu":
        return SwiGLU(hidden_size, swiglu_hidden(width))
    return gelu_mlp(hidden_size, width)
