"""Latent shards (written by `python -m dtr_scale.prep`) read back as a reference image set.

Pixel mode (`--vae none`, e.g. the embedded digits) stores each image itself, scaled to [-1, 1]
(x / 127.5 − 1), as `latent.npy` of shape (2, C, H, W): [image, mirror]. Reading it back as
uint8 is exact: float16 resolves steps of 1/127.5 in [-1, 1] with room to spare. So a prepared
training set can serve as the reference of the pixel-space evaluation with no other file.

VAE mode (`moments.npy`, (2 flips, [mean, std], C, H, W), unscaled) is decoded with the VAE the
manifest names (a local directory; nothing is downloaded): the posterior mean of the un-mirrored
image, through the same uint8 conversion as the sampler, so the reference and the samples pass
through the same decoder.
"""
from __future__ import annotations

import io
import tarfile

import numpy as np
import torch


class _ShardImages:
    """NHWC uint8 images behind the shards, in manifest shard order and tar order; reads go
    shard by shard (one decoded shard is cached)."""

    suffix = ""

    def __init__(self, manifest):
        c, h, w = self.image_chw(manifest)
        self.manifest = manifest
        self.shape = (manifest.num_samples, h, w, c)
        self.offsets = np.cumsum([0] + [s.count for s in manifest.shards])
        self._cached = (None, None)

    def image_chw(self, manifest) -> tuple[int, int, int]:
        return tuple(manifest.latent_shape)

    def to_images(self, arrays: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def _shard_images(self, i: int) -> np.ndarray:
        if self._cached[0] == i:
            return self._cached[1]
        shard = self.manifest.shards[i]
        path = self.manifest.shard_path(shard)
        arrays = []
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(self.suffix):
                    arrays.append(np.load(io.BytesIO(tar.extractfile(member).read()))[0])  # flip 0
        if len(arrays) != shard.count:
            raise ValueError(
                f"{path} holds {len(arrays)} {self.suffix.lstrip('.')} samples but dataset.json lists "
                f"{shard.count}; the shard is damaged: rerun prep"
            )
        self._cached = (i, self.to_images(np.stack(arrays)))
        return self._cached[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, len(self))
        out = []
        for i in range(len(self.manifest.shards)):
            lo, hi = max(start, self.offsets[i]), min(stop, self.offsets[i + 1])
            if lo < hi:
                out.append(self._shard_images(i)[lo - self.offsets[i] : hi - self.offsets[i]])
        return np.concatenate(out) if out else np.zeros((0, *self.shape[1:]), np.uint8)


class PixelShardImages(_ShardImages):
    suffix = ".latent.npy"

    def to_images(self, arrays: np.ndarray) -> np.ndarray:
        pixels = np.clip(np.round((arrays.astype(np.float32) + 1.0) * 127.5), 0, 255)
        return pixels.astype(np.uint8).transpose(0, 2, 3, 1)


class VaeShardImages(_ShardImages):
    suffix = ".moments.npy"

    def __init__(self, manifest, device: torch.device | str = "cpu", batch_size: int = 32):
        from dtr_scale.data.encoders import load_vae

        vae = manifest.vae
        self.device, self.batch_size = torch.device(device), batch_size
        self.vae = load_vae(vae["name"], subfolder=vae.get("subfolder") or None).to(self.device).eval()
        super().__init__(manifest)

    def image_chw(self, manifest) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)  # the VAE's downsampling
        c, h, w = manifest.latent_shape
        return self.vae.config.out_channels, h * factor, w * factor

    @torch.no_grad()
    def to_images(self, arrays: np.ndarray) -> np.ndarray:
        from dtr_scale.sampling.decode import to_uint8

        means = torch.from_numpy(arrays[:, 0].astype(np.float32))  # posterior means, unscaled
        out = [to_uint8(self.vae.decode(means[b:b + self.batch_size].to(self.device)).sample)
               for b in range(0, len(means), self.batch_size)]
        return np.concatenate(out)


def open_latent_shards(path: str, device: torch.device | str = "cpu"):
    """A reader of the images behind a prep output folder (pixel mode, or decoded VAE latents)."""
    # Imported here: the data package is only needed when a shard folder is evaluated.
    from dtr_scale.data.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest.field == "latent.npy":
        return PixelShardImages(manifest)
    return VaeShardImages(manifest, device)
