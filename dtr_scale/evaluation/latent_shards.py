"""Latent shards (written by `python -m dtr_scale.prep`) read back as a reference image set.

Pixel mode (`--vae none`, e.g. the embedded digits) stores each image itself, scaled to [-1, 1]
(x / 127.5 − 1), as `latent.npy` of shape (2, C, H, W): [image, mirror]. Reading it back as
uint8 is exact: float16 resolves steps of 1/127.5 in [-1, 1] with room to spare. So a prepared
training set can serve as the reference of the pixel-space evaluation with no other file.

VAE mode (`moments.npy`) needs the VAE to decode latents to images: that is the hook left in
`decode_vae_shards` (not implemented).
"""
from __future__ import annotations

import io
import tarfile

import numpy as np


def decode_vae_shards(manifest, **vae_options):
    """HOOK: decode VAE-mode shards to NHWC uint8 images (posterior means, flip 0).

    To plug in: load the VAE named in `manifest.vae`, decode mean[0] of each sample (without
    the latent scale factor: it is applied only at training time), map [-1, 1] to uint8 and
    return a reader with `shape`, `__len__`, `read(start, stop)` like PixelShardImages.
    """
    raise NotImplementedError(
        f"{manifest.root} holds VAE latents (vae={manifest.vae.get('name')!r}); decoding them into a "
        "reference is not implemented yet. Pass an ADM reference batch (.npz) or a folder of images "
        "as --ref instead (pixel-mode shards, `prep --vae none`, are supported)."
    )


class PixelShardImages:
    """The un-mirrored images of pixel-mode shards, in manifest shard order and tar order."""

    def __init__(self, manifest):
        c, h, w = manifest.latent_shape
        self.manifest = manifest
        self.shape = (manifest.num_samples, h, w, c)
        self.offsets = np.cumsum([0] + [s.count for s in manifest.shards])
        self._cached = (None, None)  # (shard index, decoded images): reads go shard by shard

    def __len__(self) -> int:
        return self.shape[0]

    def _shard_images(self, i: int) -> np.ndarray:
        if self._cached[0] == i:
            return self._cached[1]
        shard = self.manifest.shards[i]
        path = self.manifest.shard_path(shard)
        images = []
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".latent.npy"):
                    latent = np.load(io.BytesIO(tar.extractfile(member).read()))[0]  # flip 0
                    pixels = np.clip(np.round((latent.astype(np.float32) + 1.0) * 127.5), 0, 255)
                    images.append(pixels.astype(np.uint8).transpose(1, 2, 0))
        if len(images) != shard.count:
            raise ValueError(
                f"{path} holds {len(images)} latent.npy samples but dataset.json lists {shard.count}; "
                "the shard is damaged: rerun prep"
            )
        self._cached = (i, np.stack(images))
        return self._cached[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, len(self))
        out = []
        for i in range(len(self.manifest.shards)):
            lo, hi = max(start, self.offsets[i]), min(stop, self.offsets[i + 1])
            if lo < hi:
                out.append(self._shard_images(i)[lo - self.offsets[i] : hi - self.offsets[i]])
        return np.concatenate(out) if out else np.zeros((0, *self.shape[1:]), np.uint8)


def open_latent_shards(path: str):
    """A reader of the images behind a prep output folder (pixel mode), or the VAE hook."""
    # Imported here: the data package is only needed when a shard folder is evaluated.
    from dtr_scale.data.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest.field == "latent.npy" and manifest.vae.get("name", "none") == "none":
        return PixelShardImages(manifest)
    return decode_vae_shards(manifest)
