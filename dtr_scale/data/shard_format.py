"""The on-disk sample format of latent shards, and its cheap validation and decoding.

A shard is a plain (uncompressed) WebDataset tar. Each sample has three members:

``<key>.cls``
    The class index as ASCII decimal (``b"3"``).

``<key>.moments.npy`` (VAE mode)
    A float16 array of shape ``(2, 2, C, H, W)``:
    axis 0 is the flip (0 = the image as cropped, 1 = its horizontal mirror, each encoded
    separately by the VAE, because the latent of a mirrored image is not the mirror of the
    latent); axis 1 is the posterior statistic (0 = mean, 1 = std). ``std = exp(0.5*logvar)``
    of the diagonal Gaussian the VAE encoder returns, *before* the latent scale factor.

``<key>.image.npy`` (only with ``prep --store-images``, for REPA)
    A uint8 array of shape ``(2, C, H, W)``: the centre-cropped image and its mirror, the two
    flips of the moments/latent in the same order, so the loader picks the same flip for both.

``<key>.latent.npy`` (pixel mode, ``--vae none``)
    A float16 array of shape ``(2, C, H, W)``: the image and its mirror scaled to [-1, 1].
    This is the ``std = 0`` case of the above, stored without the zeros.

Keys are ``<shard index:06d>_<index in shard:06d>``: unique, ordered, and free of dots (WebDataset
splits a member name into key and field at the first dot of its base name).

A training sample is drawn as ``(mean[f] + std[f] * eps - shift) * scale`` with ``f`` a random
flip and ``eps ~ N(0, 1)``; ``scale`` and ``shift`` come from the manifest.
"""
from __future__ import annotations

import io
from typing import Mapping

import numpy as np

from ..errors import UserError

MOMENTS_FIELD = "moments.npy"
LATENT_FIELD = "latent.npy"
CLASS_FIELD = "cls"
IMAGE_FIELD = "image.npy"
STORED_DTYPE = np.dtype("<f2")
IMAGE_DTYPE = np.dtype("u1")


class DataError(UserError):
    """A bad shard or sample; the message names the shard and the key."""


def sample_key(shard_index: int, index_in_shard: int) -> str:
    return f"{shard_index:06d}_{index_in_shard:06d}"


def stored_shape(field: str, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Array shape stored under `field` for latents of shape (C, H, W)."""
    if field == MOMENTS_FIELD:
        return (2, 2, *latent_shape)
    if field == LATENT_FIELD:
        return (2, *latent_shape)
    raise ValueError(f"unknown sample field {field!r}; expected {MOMENTS_FIELD!r} or {LATENT_FIELD!r}")


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise with the plain .npy format (version 1.0 header): byte-identical for equal arrays."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def encode_sample(key: str, field: str, array: np.ndarray, cls: int, image: np.ndarray | None = None) -> dict:
    """A sample dict of raw bytes ready for `webdataset.TarWriter(encoder=False)`; `image` is the
    (2, C, H, W) uint8 pair of flips stored with --store-images."""
    if array.dtype != STORED_DTYPE:
        array = array.astype(STORED_DTYPE)
    sample = {"__key__": key, field: npy_bytes(array), CLASS_FIELD: str(int(cls)).encode("ascii")}
    if image is not None:
        sample[IMAGE_FIELD] = npy_bytes(image.astype(IMAGE_DTYPE))
    return sample


def check_image(sample: Mapping, image_shape: tuple[int, ...]) -> None:
    """The stored image pair of a sample: present, (2, C, H, W) uint8, whole."""
    where = f"sample {sample.get('__key__')!r} in shard {sample.get('__url__')}"
    data = sample.get(IMAGE_FIELD)
    if data is None:
        raise DataError(f"{where} has no {IMAGE_FIELD!r}, which REPA needs; rerun prep with --store-images")
    try:
        shape, dtype, offset = npy_header(data)
    except Exception as exc:
        raise DataError(f"{where}: {IMAGE_FIELD} is not a valid .npy array ({exc})") from None
    want = (2, *image_shape)
    if shape != want or dtype != IMAGE_DTYPE or len(data) - offset != int(np.prod(want)):
        raise DataError(f"{where}: {IMAGE_FIELD} has shape {shape} dtype {dtype} ({len(data) - offset} bytes), "
                        f"the manifest says {want} uint8")


def npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """Parse only the .npy header: (shape, dtype, byte offset of the payload). No data is copied."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if fortran:
        raise ValueError("Fortran-ordered arrays are not written by prep")
    return tuple(shape), dtype, stream.tell()


def check_sample(sample: Mapping, field: str, expected_shape: tuple[int, ...], num_classes: int) -> None:
    """Validate a raw sample without decoding its array: keys, npy header, byte length, class.

    Raises DataError naming the shard and key. Cheap enough to run on every sample, which is what
    lets the loader skip already-consumed samples on resume without decoding them.
    """
    where = f"sample {sample.get('__key__')!r} in shard {sample.get('__url__')}"
    if field not in sample:
        present = sorted(k for k in sample if not k.startswith("__"))
        raise DataError(f"{where} has no {field!r} (fields present: {present})")
    if CLASS_FIELD not in sample:
        raise DataError(f"{where} has no {CLASS_FIELD!r} field")
    data = sample[field]
    try:
        shape, dtype, offset = npy_header(data)
    except Exception as exc:  # numpy raises several types for a mangled header
        raise DataError(f"{where}: {field} is not a valid .npy array ({exc})") from None
    if shape != tuple(expected_shape) or dtype != STORED_DTYPE:
        raise DataError(
            f"{where}: {field} has shape {shape} dtype {dtype}, the manifest says "
            f"{tuple(expected_shape)} float16"
        )
    if len(data) - offset != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{where}: {field} payload is {len(data) - offset} bytes, expected "
                        f"{int(np.prod(shape)) * dtype.itemsize}")
    try:
        cls = int(bytes(sample[CLASS_FIELD]).decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{where}: cls {sample[CLASS_FIELD][:20]!r} is not an integer") from None
    if not 0 <= cls < num_classes:
        raise DataError(f"{where}: class {cls} is outside [0, {num_classes})")


def count_mismatch(shard: str, seen: int, listed: int) -> DataError:
    """A shard whose sample count is not the one dataset.json lists (every data mode checks it)."""
    return DataError(f"shard {shard} holds {seen} samples, dataset.json says {listed}: the manifest and the "
                     "shards come from different prep runs (or the shard was rewritten); rerun prep")


def check_finite(sample: Mapping, field: str) -> None:
    """Refuse a sample whose latents or moments hold NaN or inf: trained on, it would turn every
    weight non-finite (or, caught by the skip logic, silently stall the run). A view of the bytes
    is checked, nothing is copied; call it after `check_sample`."""
    array = decode_array(sample[field])
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"sample {sample.get('__key__')!r} in shard {sample.get('__url__')}: {field} holds "
                        f"{bad} non-finite value(s) (NaN/inf) of {array.size}; the encoder produced bad "
                        "latents: re-encode this shard with prep (check the VAE and its precision)")


def decode_array(data: bytes) -> np.ndarray:
    """Decode a validated .npy payload (a view of the bytes, no copy)."""
    shape, dtype, offset = npy_header(data)
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def decode_class(data: bytes) -> int:
    return int(bytes(data).decode("ascii").strip())
