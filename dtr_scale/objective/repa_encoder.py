"""REPA's frozen target encoder: a DINOv2 ViT built with timm and loaded from a local file.

Clusters are offline, so the weights are never downloaded here: `repa.encoder_weights` names a
local `.safetensors` (timm's hub file `model.safetensors` of `timm/vit_base_patch14_dinov2.lvd142m`)
or `.pth` (Meta's `dinov2_vitb14_pretrain.pth`), read without running code (safetensors, or
`torch.load(weights_only=True)`). `repa.encoder` names the size the file must hold; with
`dinov2-from-file` the shape is read from the file instead (tests use a tiny random one).

The encoder is not part of the trained module: engines never see it, it is not sharded,
checkpointed or exported. It runs in eval mode under no_grad, in bf16 on the GPU.

Preprocessing follows REPA's `preprocess_raw_image` for DINOv2: uint8 → [0, 1] → ImageNet
mean/std → bicubic resize. REPA resizes to 224·(resolution // 256), i.e. 16 × 14 px per side,
one encoder patch per DiT token at 256 px; here the side is the DiT's token grid × the encoder's
patch, which is the same 224 for a 256-px SiT/DiT-XL/2 and gives matching token counts at any size.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..file_hash import file_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WHERE_TO_GET = ("download it on a machine with internet access, e.g. `huggingface-cli download "
                "timm/vit_base_patch14_dinov2.lvd142m model.safetensors` (vit_small/large/giant for S/L/G), "
                "and copy it to the cluster")


@dataclass(frozen=True)
class EncoderShape:
    depth: int
    width: int
    patch: int = 14
    img_size: int = 518  # the size DINOv2 was trained at: its position embedding's grid (37 × 37)
    mlp_ratio: float = 4.0

    @property
    def heads(self) -> int:
        return max(1, self.width // 64)  # every DINOv2 has 64-wide heads


# DINOv2's sizes (timm's vit_{small,base,large,giant}_patch14_dinov2). Giant's FFN is SwiGLU.
ENCODERS = {
    "dinov2-vit-s": ("vit_small_patch14_dinov2", EncoderShape(12, 384)),
    "dinov2-vit-b": ("vit_base_patch14_dinov2", EncoderShape(12, 768)),
    "dinov2-vit-l": ("vit_large_patch14_dinov2", EncoderShape(24, 1024)),
    "dinov2-vit-g": ("vit_giant_patch14_dinov2", EncoderShape(40, 1536)),
}
FROM_FILE = "dinov2-from-file"


def read_state(path: str, key: str = "repa.encoder_weights") -> dict[str, torch.Tensor]:
    """The tensors of an encoder file, read without running any code from it."""
    if not os.path.isfile(path):
        raise UserError(f"{key}={path}: encoder weights not found (checked from {os.getcwd()}); {WHERE_TO_GET}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: name it
        raise UserError(f"{key}={path}: not a readable .safetensors or weights-only .pth file ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{key}={path}: holds no flat dict of tensors (a DINOv2 state dict is expected)")
    state.pop("mask_token", None)  # Meta's iBOT mask token: unused for features, absent from timm's ViT
    return state


def shape_of(state: dict[str, torch.Tensor], path: str) -> EncoderShape:
    """The ViT shape a DINOv2 state dict holds, or a UserError saying it is not one."""
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise UserError(f"repa.encoder_weights={path}: not a DINOv2 ViT (no {', '.join(missing)}); "
                        f"pass DINOv2 weights ({WHERE_TO_GET})")
    width, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    return EncoderShape(depth, width, patch, grid * patch, state["blocks.0.mlp.fc1.weight"].shape[0] / width)


def expected_sha256_ok(digest: str, expected: str | None, path: str) -> None:
    if not expected:
        return
    want = expected.strip().lower()
    if len(want) < 8 or not re.fullmatch(r"[0-9a-f]+", want):
        raise UserError(f"repa.encoder_sha256={expected!r}: must be hex, at least 8 digits (a prefix or the full digest)")
    if not digest.startswith(want):
        raise UserError(f"repa.encoder_weights={path} has sha256 {digest}, which does not match "
                        f"repa.encoder_sha256={expected}: the file is corrupt or another model; fetch it again "
                        "or fix repa.encoder_sha256")


def check_encoder_file(section) -> tuple[dict, EncoderShape, str]:
    """(state, shape, sha256) of `repa.encoder_weights`, checked against `repa.encoder`."""
    path = section.encoder_weights
    if not path:
        raise UserError("repa.encoder_weights: not set, but repa.enabled=true needs the DINOv2 weights file; "
                        + WHERE_TO_GET)
    state = read_state(path)
    digest = file_sha256(path)
    expected_sha256_ok(digest, section.encoder_sha256, path)
    found = shape_of(state, path)
    if section.encoder != FROM_FILE:
        want = ENCODERS[section.encoder][1]
        if (found.depth, found.width, found.patch) != (want.depth, want.width, want.patch):
            raise UserError(f"repa.encoder_weights={path} holds a ViT of depth {found.depth}, width {found.width}, "
                            f"patch {found.patch}; repa.encoder={section.encoder} is depth {want.depth}, width "
                            f"{want.width}, patch {want.patch}: set repa.encoder to the file's size or pass that file")
    return state, found, digest


def build_vit(encoder: str, shape: EncoderShape) -> torch.nn.Module:
    import timm  # the optional extra `repa`

    name = ENCODERS[encoder][0] if encoder in ENCODERS else "vit_small_patch14_dinov2"
    kwargs = {} if encoder in ENCODERS else dict(depth=shape.depth, embed_dim=shape.width, num_heads=shape.heads,
                                                 mlp_ratio=shape.mlp_ratio)
    # dynamic_img_size: the position embedding is resized (bicubic) to the input's grid, as DINOv2 does.
    return timm.create_model(name, pretrained=False, img_size=shape.img_size, patch_size=shape.patch,
                             dynamic_img_size=True, **kwargs)


class RepaEncoder:
    """The frozen DINOv2: `features(images)` → (N, tokens, width) normed patch tokens, float32.

    A plain object, not an nn.Module attribute of the objective, so engines never see it."""

    def __init__(self, section):
        try:
            import timm  # noqa: F401
        except ImportError:
            raise UserError("repa.enabled=true needs timm: pip install 'dtr-scale[repa]'") from None
        state, self.shape, self.sha256 = check_encoder_file(section)
        self.name = section.encoder
        self.vit = build_vit(self.name, self.shape)
        try:
            self.vit.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1:3]
            raise UserError(f"repa.encoder_weights={section.encoder_weights}: does not load into "
                            f"{self.name} ({'; '.join(s.strip() for s in first)[:300]})") from None
        self.vit.eval().requires_grad_(False)
        self.width = self.shape.width
        self._device = torch.device("cpu")

    def to(self, device: torch.device) -> "RepaEncoder":
        if device != self._device:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            self.vit.to(device=device, dtype=dtype)
            self._device = device
        return self

    def preprocess(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        """uint8 (N, C, H, W), C = 1 or 3 → normalised float (N, 3, grid·patch, grid·patch)."""
        x = images.to(self._device, torch.float32) / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey digits: the same value in every channel
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        side = grid * self.shape.patch
        return F.interpolate(x, size=(side, side), mode="bicubic")

    @torch.no_grad()
    def features(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        self.to(images.device)
        x = self.preprocess(images, grid).to(next(self.vit.parameters()).dtype)
        tokens = self.vit.forward_features(x)
        return tokens[:, self.vit.num_prefix_tokens:].float()
