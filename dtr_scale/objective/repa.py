"""REPA's alignment loss (Yu et al., ICLR 2025) as a loss term every objective can own.

The hidden state h (N, T, D) after block `repa.depth` (1-based, as REPA's `encoder_depth`) goes
through a projector MLP (Linear → SiLU → Linear → SiLU → Linear, `repa.projector_dim` wide, to
the encoder's width); the term is, per sample, the mean over tokens of −cos(projection, encoder
patch feature), then the mean over the batch (REPA's loss.py: the per-sample token mean summed and
divided by the batch size), added to the objective's loss with weight `repa.coeff`.

With DTR the hidden state is the block's output after routing, all C channels: the block
updates its task's active channels and passes the others on unchanged, so this is the whole
residual stream the next block reads, as on a plain DiT (not only the active channels).

The projector is a submodule of the objective (`objective.repa`): the engines shard, reduce,
optimize and checkpoint it like the DiT's own weights. It has no EMA (only the DiT's weights do),
is not part of the sampling weights, and export keeps it under its own key. The encoder is not a
submodule (see repa_encoder.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..randomness import derive_seed
from .repa_encoder import RepaEncoder

PROJECTOR_SEED_TAG = 0x5EBA  # its own generator: the DiT's initial weights stay what they were


def projector(hidden: int, width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                         nn.Linear(width, out))


def alignment_loss(projected: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(N,) per sample: mean over tokens of −cos(projected, features); both (N, T, D)."""
    z = F.normalize(projected.float(), dim=-1)
    f = F.normalize(features.float(), dim=-1)
    return -(z * f).sum(dim=-1).mean(dim=-1)


class RepaAlignment(nn.Module):
    def __init__(self, hidden_size: int, encoder: RepaEncoder | None, encoder_width: int, depth: int,
                 coeff: float, projector_dim: int, seed: int = 0):
        super().__init__()
        self.depth, self.coeff = depth, coeff
        self.projector = projector(hidden_size, projector_dim, encoder_width)
        # SiT's (and REPA's) init of every Linear, the projector's included: Xavier-uniform, zero
        # bias; drawn from its own generator, so the DiT's weights and every other draw stay as
        # they were, and a meta-device or zero.Init DiT build gets the same projector.
        gen = torch.Generator().manual_seed(derive_seed(seed, PROJECTOR_SEED_TAG))
        with torch.no_grad():
            for layer in self.projector:
                if isinstance(layer, nn.Linear):
                    bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.zero_()
        self._encoder = (encoder,)  # a tuple: not a registered submodule

    @classmethod
    def from_config(cls, cfg, dit) -> "RepaAlignment":
        r = cfg.repa
        encoder = RepaEncoder(r)
        return cls(dit.hidden_size, encoder, encoder.width, r.depth, r.coeff, r.projector_dim, r.seed)

    @property
    def encoder(self) -> RepaEncoder | None:
        return self._encoder[0]

    def forward(self, hidden: torch.Tensor, images: torch.Tensor, grid: int) -> torch.Tensor:
        """The (N,) alignment losses of hidden states (N, T, D) with the encoder's features of
        the clean uint8 images (N, C, H, W); the features carry no gradient."""
        if images is None:
            raise ValueError("REPA needs the batch's clean images: the loader yields them only for shards "
                             "prepped with --store-images")
        features = self.encoder.features(images, grid)
        if features.shape[1] != hidden.shape[1]:
            raise ValueError(f"REPA: the encoder gives {features.shape[1]} tokens, the DiT {hidden.shape[1]}")
        return alignment_loss(self.projector(hidden), features)


def validate_repa_config(cfg) -> None:
    """Raise ValueError naming the key for REPA settings that cannot train (config.validate)."""
    from ..models.dit import parse_model_name

    r = cfg.repa
    if not r.enabled:
        return
    depth = parse_model_name(cfg.model.name)[0]
    if not 1 <= r.depth <= depth:
        raise ValueError(f"repa.depth={r.depth}: {cfg.model.name} has {depth} blocks; align a block in "
                         f"[1, {depth}] (REPA: 8 of 28 for XL, 8 of 24 for L, 4 of 12 for B)")
    if not r.encoder_weights:
        raise ValueError("repa.encoder_weights: not set, but repa.enabled=true needs the DINOv2 weights file "
                         "(a local .safetensors or .pth)")


def check_repa_inputs(cfg, manifest) -> None:
    """Before any process group: the data holds images and the encoder file is the one named."""
    from ..errors import UserError
    from .repa_encoder import check_encoder_file

    if not cfg.repa.enabled:
        return
    if manifest.image_shape is None:
        raise UserError(f"data.path={cfg.data.path}: the shards hold no images (prepped without --store-images), "
                        "which repa.enabled=true needs; rerun prep with --store-images into a new --out")
    check_encoder_file(cfg.repa)
