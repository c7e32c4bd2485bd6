"""From sampler output to uint8 pixels: pixel mode or a diffusers VAE, then DiT's conversion.

Training stored `z = (latent - shift) * scale` (see dtr_scale.data.worker_stream), so decoding
inverts it: `latent = z / scale + shift`, then the VAE decodes to images in [-1, 1].

`to_uint8` is DiT's exact conversion, `clamp(127.5 * x + 128, 0, 255)` then truncation (not
rounding) to uint8, in NHWC layout as ADM's evaluator reads it. Single-channel pixel data keeps
C = 1 (shape N, H, W, 1); the evaluator accepts that layout.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import UserError

log = logging.getLogger("dtr_scale.sample")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in about [-1, 1] -> (N, H, W, C) uint8, exactly as DiT's sample.py."""
    if images.dim() != 4:
        raise ValueError(f"expected images shaped (N, C, H, W), got {tuple(images.shape)}")
    pixels = torch.clamp(127.5 * images.float() + 128.0, 0, 255)
    # .to(uint8) truncates toward zero; after the clamp that is floor, as in DiT.
    return pixels.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


class PixelDecoder:
    """`vae=none`: the latent is the image (up to the data's scale/shift, 1 and 0 for prep's pixels)."""

    name = "none"

    def __init__(self, scale_factor: float = 1.0, shift_factor: float = 0.0):
        self.scale_factor, self.shift_factor = float(scale_factor), float(shift_factor)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scale_factor + self.shift_factor


class VaeDecoder:
    """A diffusers AutoencoderKL from a local directory (clusters run offline)."""

    def __init__(self, path: str, *, device: torch.device, scale_factor: float | None = None,
                 shift_factor: float | None = None, subfolder: str | None = None,
                 expected_config_sha256: str | None = None, precision: str = "fp32"):
        from dtr_scale.data.encoders import config_sha256, load_vae

        self.name = path
        self.vae = load_vae(path, subfolder=subfolder or None).to(device).eval().requires_grad_(False)
        cfg = self.vae.config
        found = config_sha256(cfg)
        if expected_config_sha256 and found != expected_config_sha256:
            log.warning("VAE %s has config sha256 %s…, the training data was encoded with %s…; "
                        "decoded images will be wrong if this is not the same autoencoder",
                        path, found[:12], expected_config_sha256[:12])
        # The data's own factors win: they are what training multiplied by.
        self.scale_factor = float(scale_factor if scale_factor is not None
                                  else (getattr(cfg, "scaling_factor", None) or 0.18215))
        self.shift_factor = float(shift_factor if shift_factor is not None
                                  else (getattr(cfg, "shift_factor", None) or 0.0))
        self.precision, self.device = precision, device

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        from .guidance import autocast_context

        latent = z.to(self.device) / self.scale_factor + self.shift_factor
        with autocast_context(self.precision, self.device):
            return self.vae.decode(latent).sample.float()


def make_decoder(vae: str | None, metadata: dict, *, device: torch.device, precision: str = "fp32"):
    """The decoder for `vae` (`none`, a local path, or None = the weights' metadata)."""
    data = metadata.get("data") or {}
    identity = data.get("vae") or {}
    name = vae if vae is not None else identity.get("name")
    if name is None:
        raise UserError("the weights' metadata names no VAE (data.vae): pass vae=none for pixel-space "
                         "models or vae=PATH (a local diffusers AutoencoderKL directory) for latent models")
    scale, shift = data.get("scale_factor"), data.get("shift_factor")
    if str(name).lower() == "none":
        return PixelDecoder(1.0 if scale is None else scale, 0.0 if shift is None else shift)
    same_vae = vae is None or vae == identity.get("name")
    return VaeDecoder(str(name), device=device, scale_factor=scale, shift_factor=shift,
                      subfolder=identity.get("subfolder") if same_vae else None,
                      expected_config_sha256=identity.get("config_sha256"), precision=precision)
