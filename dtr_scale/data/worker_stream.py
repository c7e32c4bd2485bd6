"""One DataLoader worker's stream of batches: a WebDataset pipeline with explicit splitting.

Per worker and per *segment* (an epoch in epoch mode, a round of resampled shards in resampled
mode) the pipeline is

    shard list -> split_by_rank -> split_by_worker_id -> tar reading (webdataset) -> sample validation (header only) -> shuffle buffer
      -> [skip the first k*B samples on resume, undecoded] -> decode, flip, eps -> batches of B

The shard list holds only shards that passed `verify_shards` (size, optional sha256) when the
loader was built, so a bad shard is named once at start rather than at every draw.

Everything random is seeded from (seed, segment, rank, worker[, batch]) so the stream is a pure
function of (seed, rank, world size, number of workers). Noise and flips are drawn per *batch*
from a generator seeded by the batch's index, so a resumed worker can skip k batches by count
alone: the skipped samples go through the shuffle buffer (which must see them to reach the same
state) but are never decoded.
"""
from __future__ import annotations

import functools
import logging
import math
import random
from dataclasses import dataclass
from itertools import islice
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from .shard_format import (IMAGE_FIELD, DataError, check_finite, check_image, check_sample, count_mismatch, decode_array,
                           decode_class, stored_shape)

log = logging.getLogger("dtr_scale.data")

_SHUFFLE_TAG, _NOISE_TAG, _SHARDS_TAG = 101, 202, 303  # keep the three random streams apart


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs; plain data so it pickles into DataLoader workers."""
    paths: tuple[str, ...]         # the shards that passed verify_shards
    counts: tuple[int, ...]
    field: str
    latent_shape: tuple[int, int, int]
    num_classes: int
    scale: float
    shift: float
    batch_size: int
    seed: int
    rank: int
    world_size: int
    num_workers: int          # effective: 1 when the loader runs in the main process
    mode: str                 # "epoch" | "resampled"
    shuffle_buffer: int
    on_error: str             # "skip" | "raise"
    drop_last: bool
    random_flip: bool = True  # off for data whose mirror image is another thing (digits, text)
    image_shape: tuple[int, int, int] | None = None  # set: batches carry the stored images (REPA)

    @property
    def shards_per_round(self) -> int:
        """Resampled mode: shards each worker draws per round; at least enough for 2 batches."""
        fair = math.ceil(len(self.paths) / (self.world_size * self.num_workers))
        mean_count = max(1.0, sum(self.counts) / len(self.counts))
        return max(1, fair, math.ceil(2 * self.batch_size / mean_count))


@dataclass(frozen=True)
class WorkerStart:
    segment: int              # epoch (epoch mode) or round (resampled mode) to start in
    skip_batches: int         # batches of that segment already consumed
    errors_before: int = 0    # resampled mode: this worker's errors in earlier rounds


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The global shard order of an epoch: the same permutation on every rank."""
    return np.random.default_rng(_seed(seed, epoch, _SHARDS_TAG)).permutation(num_shards).tolist()


def split_by_rank(src, *, rank: int, world_size: int):
    """Node splitter: every world_size-th shard from `rank` (explicit, not read from torch.distributed)."""
    yield from islice(src, rank, None, world_size)


def split_by_worker_id(src, *, worker: int, num_workers: int):
    """Worker splitter: every num_workers-th shard of this rank's share, from `worker`."""
    yield from islice(src, worker, None, num_workers)


class _ErrorPolicy:
    """webdataset exception handler that skips-and-counts or raises with the shard named."""

    def __init__(self, on_error: str):
        self.on_error, self.count, self.last = on_error, 0, None

    def __call__(self, exn: Exception) -> bool:
        if self.on_error == "raise":
            if isinstance(exn, DataError):
                raise DataError(f"{exn} (data.on_error=raise; data.on_error=skip leaves bad samples out, "
                                "counted in data_errors)") from None
            raise DataError(f"bad shard data: {exn!r}") from exn
        self.count += 1
        self.last = str(exn)
        log.warning("skipping bad data (%d so far in this worker): %s", self.count, exn)
        return True


def _count_problem(url: str, seen: int, expected: dict) -> DataError | None:
    want = expected.get(url)
    return None if want is None or seen == want else count_mismatch(url, seen, want)


def _validate(src, spec: StreamSpec, policy: _ErrorPolicy):
    """Every raw sample: header, class range and finite values checked, bad ones skipped and
    counted (or raised); and each shard's sample count against dataset.json once the shard has
    been read through (a new read starts when the URL changes or its first key comes again:
    resampled rounds may draw one shard twice in a row)."""
    shape = stored_shape(spec.field, spec.latent_shape)
    expected = dict(zip(spec.paths, spec.counts))
    url, first_key, seen = None, None, 0
    for sample in src:
        u, key = sample.get("__url__"), sample.get("__key__")
        if u != url or key == first_key:
            problem = _count_problem(url, seen, expected) if url is not None else None
            if problem is not None and not policy(problem):
                return
            url, first_key, seen = u, key, 0
        seen += 1
        try:
            check_sample(sample, spec.field, shape, spec.num_classes)
            check_finite(sample, spec.field)
            if spec.image_shape is not None:
                check_image(sample, spec.image_shape)
        except DataError as exc:
            if policy(exc):
                continue
            return
        yield sample
    problem = _count_problem(url, seen, expected) if url is not None else None
    if problem is not None:
        policy(problem)


def _segment_shards(spec: StreamSpec, worker: int, segment: int) -> tuple[list[str], list]:
    """Shard list and splitter stages of one segment for this rank and worker."""
    if spec.mode == "epoch":
        order = epoch_shard_order(len(spec.paths), spec.seed, segment)
        stages = [functools.partial(split_by_rank, rank=spec.rank, world_size=spec.world_size),
                  functools.partial(split_by_worker_id, worker=worker, num_workers=spec.num_workers)]
        return [spec.paths[i] for i in order], stages
    # Resampled: each (rank, worker) draws its own shards with replacement, so the draw itself is
    # the split; the seeds differ per rank and worker, which keeps their streams independent.
    rng = np.random.default_rng(_seed(spec.seed, segment, spec.rank, worker, _SHARDS_TAG))
    picks = rng.integers(0, len(spec.paths), size=spec.shards_per_round)
    return [spec.paths[i] for i in picks], []


def _collate(spec: StreamSpec, samples: list[dict], noise_seed: int) -> tuple:
    rng = np.random.default_rng(noise_seed)
    b = len(samples)
    flips = rng.integers(0, 2, size=b)
    if not spec.random_flip:
        flips = np.zeros_like(flips)  # drawn anyway, so the noise stream is the same either way
    arrays = np.stack([decode_array(s[spec.field])[f] for s, f in zip(samples, flips)]).astype(np.float32)
    if arrays.ndim == 5:  # moments: (B, 2 [mean, std], C, H, W)
        eps = rng.standard_normal(arrays[:, 0].shape, dtype=np.float32)
        latents = arrays[:, 0] + arrays[:, 1] * eps
    else:
        latents = arrays
    if spec.shift:
        latents = latents - spec.shift
    x = torch.from_numpy(latents * np.float32(spec.scale))
    y = torch.tensor([decode_class(s["cls"]) for s in samples], dtype=torch.long)
    if spec.image_shape is None:
        return x, y
    # The image of the flip the latent was drawn from (the flip draw comes first, as without images).
    images = np.stack([decode_array(s[IMAGE_FIELD])[f] for s, f in zip(samples, flips)])
    return x, y, torch.from_numpy(images)


def segment_batches(spec: StreamSpec, worker: int, segment: int, skip: int,
                    policy: _ErrorPolicy) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(batch index within segment, x, y) for one segment, after skipping `skip` batches."""
    urls, splitters = _segment_shards(spec, worker, segment)
    stages = [wds.SimpleShardList(urls), *splitters,
              wds.tarfile_to_samples(handler=policy),
              functools.partial(_validate, spec=spec, policy=policy)]
    if spec.shuffle_buffer > 1:
        rng = random.Random(_seed(spec.seed, segment, spec.rank, worker, _SHUFFLE_TAG))
        stages.append(wds.shuffle(spec.shuffle_buffer, initial=spec.shuffle_buffer, rng=rng))
    b = spec.batch_size
    to_skip = skip * b
    batch, index = [], skip
    for sample in wds.DataPipeline(*stages):
        if to_skip:
            to_skip -= 1  # consumed before the resume: advance the stream, decode nothing
            continue
        batch.append(sample)
        if len(batch) == b:
            yield index, *_collate(spec, batch, _seed(spec.seed, segment, spec.rank, worker, index, _NOISE_TAG))
            batch, index = [], index + 1
    if batch and spec.mode == "epoch" and not spec.drop_last:
        yield index, *_collate(spec, batch, _seed(spec.seed, segment, spec.rank, worker, index, _NOISE_TAG))


def worker_items(spec: StreamSpec, worker: int, start: WorkerStart) -> Iterator[dict]:
    """The items one worker sends to the main process: batches tagged with their position,
    then (epoch mode) an end marker that carries the worker's final error count."""
    if spec.mode == "epoch":
        policy = _ErrorPolicy(spec.on_error)
        for index, x, *rest in segment_batches(spec, worker, start.segment, start.skip_batches, policy):
            yield {"worker": worker, "segment": start.segment, "index": index, "x": x, "rest": tuple(rest),
                   "errors_before": 0, "errors_in": policy.count, "end": False}
        yield {"worker": worker, "segment": start.segment, "index": -1, "x": None, "y": None,
               "errors_before": 0, "errors_in": policy.count, "end": True}
        return
    segment, skip, before = start.segment, start.skip_batches, start.errors_before
    empty_rounds = 0
    while True:
        policy = _ErrorPolicy(spec.on_error)
        produced = 0
        for index, x, *rest in segment_batches(spec, worker, segment, skip, policy):
            produced += 1
            yield {"worker": worker, "segment": segment, "index": index, "x": x, "rest": tuple(rest),
                   "errors_before": before, "errors_in": policy.count, "end": False}
        empty_rounds = 0 if produced or skip else empty_rounds + 1
        if empty_rounds >= 20:
            # Name what was wrong: a sha256 check would not help when every sample is well-formed
            # but does not fit the manifest (another shape, classes beyond num_classes).
            raise DataError(f"worker {worker} of rank {spec.rank} found no valid batch in 20 resampled "
                            f"rounds ({before + policy.count} bad shards/samples); the last: "
                            f"{policy.last or 'none (the shards hold fewer samples than one batch)'}")
        segment, skip, before = segment + 1, 0, before + policy.count
