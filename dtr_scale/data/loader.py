"""`LatentLoader`: batches `(x, y)` of latents from prep's shards, resumable to the batch.

Modes
-----
``epoch``: each epoch the shard list is permuted with (seed, epoch) — the same permutation on
every rank — then split: rank r takes shards r, r+R, ...; worker w of that rank takes every W-th
of those. Each sample is therefore read exactly once per epoch across all ranks and workers.
Shards do not always divide evenly: with S shards, a rank gets ceil or floor of S/R shards (and
workers likewise), so ranks may get different numbers of samples and batches in an epoch, and a
worker's last batch of the epoch may be short (unless ``drop_last=True``, which then drops those
few samples). With S < R*W some workers (or ranks) get nothing that epoch. A multi-rank training
loop that needs the same number of steps on every rank should use ``resampled`` mode.

``resampled``: an infinite stream for multi-node training. Each (rank, worker) draws its own
shards with replacement in rounds (seeded by seed, round, rank, worker); every batch is full.

Order and resume
----------------
Batches from the W workers are merged in a fixed round-robin order (w0, w1, ..., skipping
workers whose epoch has ended), independent of which worker process happens to be faster. The
position is ``state_dict()``: per worker, the segment (epoch or round) and how many of its
batches were consumed, plus the next worker in the cycle. ``load_state_dict`` and the next
``iter()`` restart the workers at those positions; each worker replays its shards through the
shuffle buffer without decoding the consumed samples (cost: reading those bytes again, at most
one epoch's or round's share), so the batches that follow are exactly those an uninterrupted run
would have produced. Resuming requires the same seed, rank, world size, worker count and batch
size (``num_workers`` 0 and 1 give the same stream).
"""
from __future__ import annotations

import copy
from collections import deque
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .manifest import Manifest, check_data_path, verify_shards
from .worker_stream import StreamSpec, WorkerStart, worker_items

STATE_VERSION = 1


class _WorkerStreams(IterableDataset):
    """Runs `worker_items` for whichever DataLoader worker iterates it."""

    def __init__(self, spec: StreamSpec, starts: list[WorkerStart]):
        self.spec, self.starts = spec, starts

    def __iter__(self):
        info = get_worker_info()
        worker = 0 if info is None else info.id
        return worker_items(self.spec, worker, self.starts[worker])


class ManifestFacts:
    """What the training loop reads about the data, from `self.manifest` (both loaders)."""
    manifest: Manifest

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.manifest.latent_shape

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def scale_factor(self) -> float:
        return self.manifest.scale_factor

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples


def stored_images(m: Manifest) -> tuple[int, int, int]:
    """The manifest's image shape; a dataset prepped without --store-images cannot feed REPA."""
    if m.image_shape is None:
        raise ValueError(f"{m.root}/dataset.json: the shards hold no images (prepped without --store-images), "
                         "which repa.enabled=true needs; rerun prep with --store-images into a new --out")
    return m.image_shape


class LatentLoader(ManifestFacts):
    """Iterable of `(x, y)`: x float32 (B, C, H, W) latents already scaled, y long (B,); with
    `images`, `(x, y, images)`: the stored uint8 (B, C, H', W') image of each latent's flip.

    In epoch mode each `iter()` yields (the rest of) one epoch, then advances to the next;
    in resampled mode `iter()` never ends.
    """

    def __init__(self, path, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, seed: int = 0, mode: str = "epoch",
                 shuffle_buffer: int = 1000, on_error: str = "skip", verify_sha256: bool = False,
                 drop_last: bool = False, prefetch_factor: int = 2, pin_memory: bool = False,
                 random_flip: bool = True, images: bool = False):
        if mode not in ("epoch", "resampled"):
            raise ValueError(f"mode must be 'epoch' or 'resampled', got {mode!r}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.manifest: Manifest = check_data_path(path)
        m = self.manifest
        # Every shard is checked once here, before the first batch: a bad one stops the run now
        # (raise) or is left out of the shard list for good (skip), named in one warning.
        good, self.bad_shards = verify_shards(m, on_error, verify_sha256, warn=rank == 0)
        # Every rank finds the same bad shards; rank 0 alone counts them, so that the training
        # loop's sum of data_errors over ranks counts each bad shard once.
        self._bad_shard_errors = len(self.bad_shards) if rank == 0 else 0
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory
        self.spec = StreamSpec(
            paths=tuple(m.shard_path(s) for s in good), counts=tuple(s.count for s in good),
            field=m.field, latent_shape=m.latent_shape, num_classes=m.num_classes,
            scale=m.scale_factor, shift=m.shift_factor, batch_size=batch_size, seed=seed, rank=rank,
            world_size=world_size, num_workers=max(1, num_workers), mode=mode,
            shuffle_buffer=shuffle_buffer, on_error=on_error, drop_last=drop_last, random_flip=random_flip,
            image_shape=stored_images(m) if images else None)
        self._state = self._fresh_state(epoch=0)

    # -- facts about the data ------------------------------------------------------------
    @property
    def data_errors(self) -> int:
        """Bad shards left out at start (rank 0 counts them) plus bad shards/samples skipped so
        far in consumed data, summed over workers and epochs."""
        return self._bad_shard_errors + self._stream_errors()

    def _stream_errors(self) -> int:
        st = self._state
        return st["errors_past_epochs"] + sum(w["errors_before"] + w["errors_in"] for w in st["workers"])

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    # -- position ------------------------------------------------------------------------
    def _fresh_state(self, epoch: int, errors_past_epochs: int = 0) -> dict:
        s = self.spec
        return {"version": STATE_VERSION, "mode": s.mode, "seed": s.seed, "rank": s.rank,
                "world_size": s.world_size, "num_workers": s.num_workers, "batch_size": s.batch_size,
                "epoch": epoch, "batches": 0, "next_worker": 0, "errors_past_epochs": errors_past_epochs,
                "workers": [{"segment": epoch if s.mode == "epoch" else 0, "consumed": 0, "done": False,
                             "errors_before": 0, "errors_in": 0} for _ in range(s.num_workers)]}

    def state_dict(self) -> dict:
        """Position after the last batch handed out (plain ints: fits in any checkpoint)."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        for key in ("mode", "seed", "rank", "world_size", "num_workers", "batch_size"):
            if state[key] != self._state[key]:
                raise ValueError(
                    f"cannot resume the data position exactly: saved {key}={state[key]!r}, this loader "
                    f"has {self._state[key]!r}. Use the same {key}, or start the data stream afresh "
                    "(skip load_state_dict) if a different one is intended.")
        self._state = copy.deepcopy(state)

    # -- iteration -----------------------------------------------------------------------
    def _source(self, starts: list[WorkerStart]) -> Iterator[dict]:
        dataset = _WorkerStreams(self.spec, starts)
        if self.num_workers == 0:
            return iter(dataset)
        return iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                               prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory,
                               persistent_workers=False))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        st = self._state
        n = self.spec.num_workers
        starts = [WorkerStart(w["segment"], w["consumed"], w["errors_before"]) for w in st["workers"]]
        source = self._source(starts)
        pending = [deque() for _ in range(n)]
        w = st["next_worker"]
        while not all(ws["done"] for ws in st["workers"]):
            ws = st["workers"][w]
            if ws["done"]:
                w = (w + 1) % n
                continue
            while not pending[w]:
                try:
                    item = next(source)
                except StopIteration:
                    raise RuntimeError(f"data worker {w} stopped without an end marker") from None
                pending[item["worker"]].append(item)
            item = pending[w].popleft()
            ws["errors_before"], ws["errors_in"] = item["errors_before"], item["errors_in"]
            w = (w + 1) % n
            st["next_worker"] = w
            if item["end"]:
                ws["done"] = True
                continue
            # Count the batch as consumed before handing it out, so a state_dict() taken right
            # after receiving it resumes with the following batch.
            ws["segment"], ws["consumed"] = item["segment"], item["index"] + 1
            st["batches"] += 1
            yield (item["x"], *item["rest"])  # (x, y), or (x, y, images) with images on
        # Epoch mode only (resampled workers never finish): move to the next epoch.
        self._state = self._fresh_state(st["epoch"] + 1, self._stream_errors())
