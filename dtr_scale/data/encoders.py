"""What turns a batch of cropped images into stored arrays: the VAE, or nothing (pixel mode).

Both encoders take float32 (B, C, H, W) images in [-1, 1] and return float16 arrays with the
per-sample layout documented in `dtr_scale.data.shard_format` (image and mirror both encoded).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from .shard_format import LATENT_FIELD, MOMENTS_FIELD


class PixelEncoder:
    """`--vae none`: the [-1, 1] image is its own latent (std 0), stored as latent.npy (2, C, H, W)."""

    field = LATENT_FIELD
    scale_factor = 1.0
    shift_factor = 0.0
    identity = {"name": "none"}

    def __init__(self, channels: int):
        self.channels = channels

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return (self.channels, resolution, resolution)

    def encode(self, images: np.ndarray) -> np.ndarray:
        return np.stack([images, images[..., ::-1]], axis=1).astype(np.float16)


def _looks_like_path(name: str) -> bool:
    # Hub ids are "org/name"; anything absolute, relative-dotted, ~ or deeper is a local path.
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def check_vae_path(name: str) -> str:
    """`name` expanded; a name that looks like a path must be an existing directory (checked
    before any process group starts, and again when the VAE loads)."""
    path = os.path.expanduser(name)
    if _looks_like_path(name) and not os.path.isdir(path):
        raise FileNotFoundError(
            f"VAE directory {path!r} does not exist. Pass a directory holding config.json and "
            "diffusion_pytorch_model.safetensors (as written by AutoencoderKL.save_pretrained, e.g. "
            "`huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir DIR` on a machine with "
            "network), or --vae none for pixel mode.")
    return path


def load_vae(name: str, *, subfolder: str | None = None, allow_download: bool = False):
    """Load a diffusers AutoencoderKL from a local directory or a hub id, never hanging offline.

    Without `allow_download` only local files are used (a directory, or the local Hugging Face
    cache for a hub id), so an offline cluster node fails at once with a message instead of
    waiting on network timeouts.
    """
    path = check_vae_path(name)
    if not allow_download:
        # Read by huggingface_hub at import time; a no-op if diffusers was imported already,
        # in which case local_files_only below still keeps us off the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL

    local = os.path.isdir(path)
    kwargs = {"local_files_only": local or not allow_download}
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        vae = AutoencoderKL.from_pretrained(path if local else name, **kwargs)
    except Exception as exc:
        if local:
            raise FileNotFoundError(
                f"could not load a diffusers AutoencoderKL from {path!r}"
                f"{' (subfolder ' + subfolder + ')' if subfolder else ''}: {exc}. The directory needs "
                "config.json and diffusion_pytorch_model.safetensors (AutoencoderKL.save_pretrained)."
            ) from exc
        hint = ("download it on a machine with network (`huggingface-cli download "
                f"{name} --local-dir DIR`) and pass --vae DIR, or rerun with --allow-download"
                if not allow_download else "check the id and your network access")
        raise FileNotFoundError(f"VAE {name!r} is not available locally ({type(exc).__name__}): "
                                f"{hint}.") from exc
    return vae


def config_sha256(config) -> str:
    """Hash of the VAE config without diffusers' bookkeeping keys (`_name_or_path`, versions)."""
    clean = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


class VaeEncoder:
    """Posterior mean and std of a diffusers AutoencoderKL, stored as moments.npy (2, 2, C, h, w)."""

    field = MOMENTS_FIELD

    def __init__(self, name: str, *, subfolder: str | None = None, allow_download: bool = False,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.vae = load_vae(name, subfolder=subfolder, allow_download=allow_download)
        self.vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype
        cfg = self.vae.config
        # 0.18215 is SD-VAE's value and diffusers' default; newer VAEs carry their own.
        self.scale_factor = float(getattr(cfg, "scaling_factor", None) or 0.18215)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.channels = int(cfg.latent_channels)
        self.identity = {"name": name, "class": type(self.vae).__name__,
                         "subfolder": subfolder or "", "config_sha256": config_sha256(cfg)}

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        if resolution % self.downsample:
            raise ValueError(f"--resolution {resolution} is not a multiple of the VAE's "
                             f"downsampling factor {self.downsample}")
        side = resolution // self.downsample
        return (self.channels, side, side)

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(self.device, self.dtype)
        both = torch.cat([x, x.flip(-1)])                    # (2B, 3, H, W): images then mirrors
        dist = self.vae.encode(both).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
        b = x.shape[0]
        moments = torch.stack([torch.stack([mean[:b], std[:b]], 1),
                               torch.stack([mean[b:], std[b:]], 1)], 1)  # (B, 2 flips, 2, C, h, w)
        return moments.cpu().numpy().astype(np.float16)
