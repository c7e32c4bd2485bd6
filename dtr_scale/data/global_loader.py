"""`GlobalLoader` (`data.mode=global`): a world-size-invariant sample order read by random access.

Each rank reads only its own samples of each global batch (see `global_order` for the order, the
split and the per-sample seeds) through the sample index (`sample_index`: prep's `index.npy`, or
for older datasets one built once and kept, `index_cache`), memory-mapped: a positioned read of
the sample's bytes, no streaming, no shuffle buffer, and at start no shard is opened until a
sample of it is read. The stream never ends; `epoch` says where it is.

Batches are `GlobalBatch(x, y, positions, images)`: the positions let the training objective draw
each sample's timestep, noise and label dropout from its own seed; `images` (only when the loader
is asked for them, for REPA; else None) is the stored uint8 (b, C, H', W') image of the flip each
latent was drawn from.

Workers: micro-batch k of this rank is one DataLoader item; workers take items in turn and the
DataLoader hands them back in order, and an item is a pure function of k, so the stream is the
same for any `num_workers`.

Position and resume: `state_dict()` is the global position of the next optimizer step (plus the
micro-batches of it already taken, normally 0), independent of world size, accumulation and
workers, so a run resumes at the same global position on any cluster shape. Bad data is always an
error here (skipping a sample would change the batch a step trains on); the message names the
shard and key.
"""
from __future__ import annotations

import itertools
import os
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..randomness import LOAD_TAG, position_generator
from .global_order import EpochOrder, micro_batch_positions
from .loader import ManifestFacts, stored_images
from .manifest import check_data_path, verify_shards
from .shard_format import (IMAGE_FIELD, DataError, check_finite, check_image, check_sample, decode_array, decode_class,
                           stored_shape)
from .index_cache import cached_index
from .sample_index import SampleIndex, prep_index

STATE_VERSION = 1


class GlobalBatch(NamedTuple):
    x: torch.Tensor          # (b, C, H, W) float32 latents, scaled
    y: torch.Tensor          # (b,) long labels
    positions: torch.Tensor  # (b,) long global positions (the per-sample seeds)
    images: torch.Tensor | None = None  # (b, C, H', W') uint8 clean images (REPA), when asked for


class _MicroBatches(Dataset):
    """Item k: this rank's k-th micro-batch (step k // A, micro-batch k % A)."""

    def __init__(self, index: SampleIndex, manifest, *, seed: int, random_flip: bool, global_batch: int,
                 rank: int, world_size: int, grad_accum: int, image_shape: tuple[int, int, int] | None = None):
        self.index, self.seed, self.random_flip, self.image_shape = index, seed, random_flip, image_shape
        self.field, self.num_classes = manifest.field, manifest.num_classes
        self.shape = stored_shape(manifest.field, manifest.latent_shape)
        self.scale, self.shift = np.float32(manifest.scale_factor), np.float32(manifest.shift_factor)
        self.layout = dict(global_batch=global_batch, rank=rank, world_size=world_size, grad_accum=grad_accum)
        self.grad_accum = grad_accum
        self.order = EpochOrder(len(index), seed)
        self._fds: dict[int, int] = {}  # opened lazily, per process (workers are forked)
        self._pid = -1

    def _read(self, sample: int) -> dict:
        """The sample's raw members (checked): its array, class and, with images on, image."""
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        shard, key, *ranges = self.index.entry(sample)
        if shard not in self._fds:
            self._fds[shard] = os.open(self.index.paths[shard], os.O_RDONLY)
        names = [self.field, "cls", IMAGE_FIELD]
        members = [(n, o, z) for n, o, z in zip(names, ranges[0::2], ranges[1::2])
                   if n != IMAGE_FIELD or (self.image_shape is not None and o >= 0)]
        # A sample's members are neighbours in the tar: one read covers them all.
        lo = min(o for _, o, _ in members)
        span = os.pread(self._fds[shard], max(o + z for _, o, z in members) - lo, lo)
        raw = {"__key__": key, "__url__": self.index.paths[shard],
               **{n: span[o - lo:o - lo + z] for n, o, z in members}}
        check_sample(raw, self.field, self.shape, self.num_classes)
        check_finite(raw, self.field)
        if self.image_shape is not None:
            check_image(raw, self.image_shape)  # also names a sample the index lists without an image
        return raw

    def _latent(self, data: bytes, position: int) -> tuple[np.ndarray, int]:
        """The sample's latent at its global position, and the flip it was drawn from."""
        g = position_generator(self.seed, position, LOAD_TAG)
        flip = int(torch.randint(0, 2, (1,), generator=g)) if self.random_flip else 0
        arr = decode_array(data)[flip].astype(np.float32)
        if arr.ndim == 4:  # moments: (2 [mean, std], C, H, W)
            arr = arr[0] + arr[1] * torch.randn(arr.shape[1:], generator=g).numpy()
        return ((arr - self.shift) * self.scale if self.shift else arr * self.scale), flip

    def __getitem__(self, k: int) -> GlobalBatch:
        positions = micro_batch_positions(k // self.grad_accum, k % self.grad_accum, **self.layout)
        samples = self.order.samples(positions)
        latents, labels, images = [], [], []
        for p, s in zip(positions.tolist(), samples.tolist()):
            try:
                raw = self._read(s)
            except DataError as exc:
                raise DataError(f"{exc} (global position {p}, step {k // self.grad_accum}; data.mode=global "
                                "stops on bad data, since leaving a sample out would change every later "
                                "batch)") from None
            latent, flip = self._latent(raw[self.field], p)
            latents.append(latent)
            labels.append(decode_class(raw["cls"]))
            if self.image_shape is not None:
                images.append(decode_array(raw[IMAGE_FIELD])[flip])  # the image of the latent's flip
        return GlobalBatch(torch.from_numpy(np.stack(latents)), torch.tensor(labels, dtype=torch.long),
                           torch.from_numpy(positions), torch.from_numpy(np.stack(images)) if images else None)


class GlobalLoader(ManifestFacts):
    """Iterable of `GlobalBatch` micro-batches for one rank; never ends (see module docstring).
    With `images`, each batch also carries the stored images (the data must hold them)."""

    def __init__(self, path, global_batch_size: int, *, rank: int = 0, world_size: int = 1, grad_accum: int = 1,
                 num_workers: int = 0, seed: int = 0, random_flip: bool = True, verify_sha256: bool = False,
                 prefetch_factor: int = 2, pin_memory: bool = False, images: bool = False):
        if global_batch_size <= 0 or global_batch_size % (world_size * grad_accum):
            raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of "
                             f"world size {world_size} x grad_accum {grad_accum}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        # Every sample read is checked against the manifest (check_sample), so the first-sample
        # check would only open a shard this rank may not need.
        self.manifest = check_data_path(path, first_sample=False)
        # A bad shard always stops the run here: leaving it out would change N, the order and
        # what every later step trains on (data.on_error=skip does not apply in this mode).
        verify_shards(self.manifest, "raise", verify_sha256)
        self.index = prep_index(self.manifest) or cached_index(self.manifest, rank)
        self.global_batch, self.world_size, self.grad_accum = global_batch_size, world_size, grad_accum
        self.seed, self.num_workers = seed, num_workers
        self.prefetch_factor, self.pin_memory = prefetch_factor, pin_memory
        self.dataset = _MicroBatches(self.index, self.manifest, seed=seed, random_flip=random_flip,
                                     global_batch=global_batch_size, rank=rank, world_size=world_size,
                                     grad_accum=grad_accum,
                                     image_shape=stored_images(self.manifest) if images else None)
        self._next = 0  # this rank's next micro-batch number

    # -- position and errors (the data's facts come from ManifestFacts) -------------------
    @property
    def data_errors(self) -> int:
        return 0  # bad data raises in this mode

    @property
    def position(self) -> int:
        """Global position of the next sample this rank's next step starts at (step · B)."""
        return self._next // self.grad_accum * self.global_batch

    @property
    def epoch(self) -> int:
        return self.position // self.num_samples

    # -- position ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "mode": "global", "seed": self.seed,
                "global_batch_size": self.global_batch, "num_samples": self.num_samples,
                "position": self.position, "micro": self._next % self.grad_accum,
                "world_size": self.world_size, "grad_accum": self.grad_accum}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != "global" or state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state is mode {state.get('mode')!r} version {state.get('version')}; "
                             f"data.mode=global needs a state saved in that mode (version {STATE_VERSION})")
        for key, mine in (("seed", self.seed), ("global_batch_size", self.global_batch),
                          ("num_samples", self.num_samples)):
            if state[key] != mine:
                raise ValueError(f"cannot continue the global sample order: saved {key}={state[key]!r}, "
                                 f"this run has {mine!r}. Use the same {key} (data and train.seed), or "
                                 "start the data order afresh (checkpoint.resume=none)")
        if state["micro"] and (state["world_size"], state["grad_accum"]) != (self.world_size, self.grad_accum):
            raise ValueError("the loader state was saved in the middle of an optimizer step; it resumes "
                             "only on the same world size and train.grad_accum")
        self._next = state["position"] // self.global_batch * self.grad_accum + state["micro"]

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[GlobalBatch]:
        items = itertools.count(self._next)
        if self.num_workers == 0:
            source = map(self.dataset.__getitem__, items)
        else:
            source = iter(DataLoader(self.dataset, batch_size=None, sampler=items, num_workers=self.num_workers,
                                     prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory))
        for batch in source:
            self._next += 1  # counted before it is handed out, like LatentLoader
            yield batch
