"""The DiT (Peebles & Xie, 2023) with Denoising Task Routing, in one readable file.

Parameter names match the official DiT checkpoints, so official weights load strictly (see
`pretrained.py`). Routing adds no parameters: `TaskRouter` turns the timesteps into per-sample
channel masks once per forward, and each block applies its mask (DTR reference semantics):

    r   = x * m
    r   = r + gate_msa * Attn(modulate(LN(r), shift_msa, scale_msa))
    r   = r + gate_mlp * MLP(modulate(LN(r), shift_mlp, scale_mlp))
    out = r + x * (1 - m)

With routing disabled (β = 1) the blocks get `mask=None` and run the plain DiT code path.
The modern block options (`block_options.py`: qk-norm, RMSNorm, SwiGLU, 2-D RoPE) swap the
layers inside this same routed block; the masking and the residual routing do not change.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .block_options import PLAIN_BLOCK, BlockOptions, block_mlp, block_norm, head_norm
from .rmsnorm import RMSNorm
from .rope2d import rope2d_tables
from .sizes import DIT_MODELS, parse_model_name  # noqa: F401 - DIT_MODELS is re-exported
from .routing import TIME_INPUTS, RoutingConfig, TaskRouter, task_index_from_continuous


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches -> tokens, as a strided conv (official name `x_embedder.proj`)."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, L, C)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t (frequency 256) through a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding with an extra "null" row (index num_classes) for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """`force_drop` (N,) bool: the caller's dropout decisions (drawn per sample elsewhere, so
        that they do not depend on which rank runs the sample); None: draw them here."""
        if train and self.dropout_prob > 0:
            if force_drop is None:
                drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            else:
                drop = force_drop.to(labels.device, torch.bool)
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block; `mask` (N, 1, C) routes channels, None = plain DiT."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attention: str = "auto",
                 options: BlockOptions = PLAIN_BLOCK):
        super().__init__()
        self.norm1 = block_norm(options, hidden_size)
        qk = head_norm(options, hidden_size // num_heads) if options.qk_norm else None
        self.attn = Attention(hidden_size, num_heads, backend=attention, head_norm=qk)
        self.norm2 = block_norm(options, hidden_size)
        self.mlp = block_mlp(options, hidden_size, mlp_ratio, Mlp)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        # Recompute this block's activations in backward (memory for compute); set from outside
        # (`DiT.set_checkpointing`). The checkpoint call sits inside `forward` so that a compiled
        # block compiles it too, and parameter names stay the official ones (no wrapper module).
        self.checkpoint_activations = False

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.checkpoint_activations and torch.is_grad_enabled():
            return checkpoint(self._forward, x, c, mask, rope, use_reentrant=False)
        return self._forward(x, c, mask, rope)

    def _forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None,
                 rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        r = x if mask is None else x * mask
        # LayerNorm sees all C channels (the zeros included) and the branch outputs are not
        # re-masked: both exactly as the DTR reference, which trained the published numbers.
        r = r + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(r), shift_msa, scale_msa), rope)
        r = r + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(r), shift_mlp, scale_mlp))
        return r if mask is None else r + x * (1 - mask)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, options: BlockOptions = PLAIN_BLOCK):
        super().__init__()
        self.norm_final = block_norm(options, hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        routing: RoutingConfig | None = None,
        attention: str = "auto",
        checkpointing: float = 0.0,
        time_input: str = "discrete",
        block: BlockOptions | None = None,
    ):
        super().__init__()
        self.block_options = block = block or PLAIN_BLOCK
        block.validate(hidden_size, num_heads)
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input={time_input!r}: expected one of {', '.join(TIME_INPUTS)}")
        # "discrete": t is a DDPM timestep 0..T-1 and is its own task index. "continuous": t is
        # flow time in [0, 1] (SiT: t = 1 is data), fed unscaled to the timestep embedder as SiT
        # does; the router maps it to task round((1 - t)(T - 1)).
        self.time_input = time_input
        if not 0.0 <= checkpointing <= 1.0:
            raise ValueError(f"model.checkpointing must be a fraction in [0, 1], got {checkpointing!r}")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.depth = depth

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        class_dropout_prob = 0.0 if num_classes == 1 else class_dropout_prob
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # Fixed 2-D sin-cos position embedding, a frozen Parameter as in the official layout.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, attention=attention, options=block) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, block)
        # β = 1 is plain DiT: no router, no buffers, no per-block multiply.
        self.routing = routing if routing is not None and not routing.is_identity else None
        self.router = TaskRouter(self.routing, hidden_size, depth) if self.routing else None
        self.dynamic_batch = False  # set by `parallelize.apply_compile`
        self.set_checkpointing(checkpointing)
        if not _deferred(self.x_embedder.proj.weight):
            self.initialize_weights()

    def set_checkpointing(self, fraction: float) -> None:
        """Blocks [0, round(fraction · depth)) recompute their activations in backward."""
        self.num_checkpointed = int(round(fraction * self.depth))
        for i, block in enumerate(self.blocks):
            block.checkpoint_activations = i < self.num_checkpointed

    def initialize_weights(self) -> None:
        params = dict(self.named_parameters())
        for name, init in self.init_plan():
            init(params[name].data)

    def init_plan(self) -> list[tuple[str, Callable[[torch.Tensor], None]]]:
        """(parameter name, in-place init of the FULL tensor), in the order they draw random
        numbers. Each init overwrites the whole tensor, so a rank that builds one parameter at a
        time (meta-device init, parallel/fsdp.py and parallel/deepspeed_engine.py) gets exactly the weights of this eager
        init for the same seed, and keeps only its shard."""
        plan = []
        for name, module in self.named_modules():  # the order `self.apply` visits Linears
            if isinstance(module, nn.Linear):
                plan.append((f"{name}.weight", nn.init.xavier_uniform_))
                if module.bias is not None:
                    plan.append((f"{name}.bias", nn.init.zeros_))
        pos = torch.from_numpy(get_2d_sincos_pos_embed(self.hidden_size, self.x_embedder.grid_size)).float()
        plan.append(("pos_embed", lambda w: w.copy_(pos.unsqueeze(0))))
        # The patch conv is initialised like a Linear, not a Conv2d.
        plan.append(("x_embedder.proj.weight", lambda w: nn.init.xavier_uniform_(w.view(w.shape[0], -1))))
        plan.append(("x_embedder.proj.bias", nn.init.zeros_))
        normal = lambda w: nn.init.normal_(w, std=0.02)  # noqa: E731
        plan += [("y_embedder.embedding_table.weight", normal), ("t_embedder.mlp.0.weight", normal),
                 ("t_embedder.mlp.2.weight", normal)]
        # adaLN-Zero: every block starts as the identity and the output as zero.
        zero = [f"blocks.{i}.adaLN_modulation.1.{k}" for i in range(self.depth) for k in ("weight", "bias")]
        zero += [f"final_layer.{m}.{k}" for m in ("adaLN_modulation.1", "linear") for k in ("weight", "bias")]
        # The modern block's norm scales (ones) and LayerNorm qk-norm biases; none in plain DiT.
        norms = [(f"{name}.{k}", nn.init.ones_ if k == "weight" else nn.init.zeros_)
                 for name, m in self.named_modules() if isinstance(m, (RMSNorm, nn.LayerNorm))
                 for k, p in m.named_parameters(recurse=False)]
        return plan + [(name, nn.init.zeros_) for name in zero] + norms

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p·p·C_out) -> (N, C_out, H, W)."""
        c, p, h = self.out_channels, self.patch_size, self.x_embedder.grid_size
        x = x.reshape(x.shape[0], h, h, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, h * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                force_drop: torch.Tensor | None = None, hidden_at: int | None = None):
        """x: (N, C, H, W) latents; t: (N,) ORIGINAL timesteps 0..T-1 (the task index), or flow
        time in [0, 1] with time_input="continuous"; y: (N,) labels; force_drop: optional (N,)
        bool label-dropout decisions for training (see LabelEmbedder). With `hidden_at=k` it
        returns (output, the (N, T, D) tokens after block k (1-based), routing applied) for
        REPA's alignment loss."""
        hidden = None
        # Inputs follow the weights' dtype (bf16 under FSDP mixed precision or DeepSpeed bf16);
        # the output goes back to fp32 so that the loss and the sampler work in full precision.
        h = self.x_embedder(x.to(self.x_embedder.proj.weight.dtype)) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop)
        masks = self.router(self.task_index(t), h.dtype) if self.router is not None else None  # (G, N, 1, C)
        rope = self.rope_tables(h)
        for i, block in enumerate(self.blocks):
            mask = None if masks is None else masks[i if masks.shape[0] > 1 else 0]
            if self.dynamic_batch:  # compiled blocks: one graph for every batch size
                mark_batch_dynamic(h, c, mask)
            h = block(h, c, mask, rope)
            if i + 1 == hidden_at:
                hidden = h
        out = self.unpatchify(self.final_layer(h, c)).float()
        return out if hidden_at is None else (out, hidden)

    def rope_tables(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """pos_embed=rope2d: the (cos, sin) tables of every attention, built per forward (a few
        KB) rather than kept as buffers, so that meta-device init and checkpoints never see them."""
        if self.block_options.pos_embed != "rope2d":
            return None
        cos, sin = rope2d_tables(self.hidden_size // self.num_heads, self.x_embedder.grid_size, h.device)
        return cos.to(h.dtype), sin.to(h.dtype)

    def task_index(self, t: torch.Tensor) -> torch.Tensor:
        """The DTR task of each sample's time (see `time_input`)."""
        if self.time_input == "continuous":
            return task_index_from_continuous(t, self.router.config.num_tasks if self.router else 1000)
        return t

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float, cfg_channels: int | None = None
    ) -> torch.Tensor:
        """Classifier-free guidance on a batch [x; x] with labels [y; null].

        Guidance is applied to all latent channels by default; `cfg_channels=3` reproduces the
        official DiT samples, which guided only the first three of the four channels.
        """
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        n = self.in_channels if cfg_channels is None else int(cfg_channels)
        eps, rest = out[:, :n], out[:, n:]
        cond, uncond = eps.chunk(2, dim=0)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided], dim=0), rest], dim=1)


def _deferred(param: torch.Tensor) -> bool:
    """A parameter without values: built on the meta device, or emptied by a constructor context
    that partitions modules as they are built (DeepSpeed's zero.Init). The engine that built the
    model so then sets the weights from `init_plan()`, one parameter at a time (parallel/fsdp.py,
    parallel/deepspeed_engine.py)."""
    return param.is_meta or param.numel() == 0


def mark_batch_dynamic(*tensors: torch.Tensor | None) -> None:
    """Tell torch.compile that dim 0 varies (last partial batch, CFG doubling, per-rank splits),
    so that a compiled block is traced once with a symbolic batch instead of once per size."""
    for tensor in tensors:
        if tensor is not None:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """(grid², D) MAE-style fixed embedding: half the channels encode rows, half columns."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb_h = _sincos_1d(embed_dim // 2, grid[0])
    emb_w = _sincos_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def create_model(
    name: str,
    *,
    input_size: int,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    class_dropout_prob: float = 0.1,
    routing: RoutingConfig | None = None,
    attention: str = "auto",
    checkpointing: float = 0.0,
    time_input: str = "discrete",
    block: BlockOptions | None = None,
) -> DiT:
    depth, hidden, heads, patch = parse_model_name(name)
    return DiT(
        input_size=input_size,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        class_dropout_prob=class_dropout_prob,
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        routing=routing,
        attention=attention,
        checkpointing=checkpointing,
        time_input=time_input,
        block=block,
    )
