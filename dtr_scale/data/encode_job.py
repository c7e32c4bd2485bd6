"""The distributed, resumable encoding job behind `python -m dtr_scale.prep`.

Work split: shard i of the source's plan is encoded by rank i % world_size. Each rank skips
shards that an earlier run finished (see shard_writer), so a rerun after a crash redoes only
the unfinished shards, and its output is byte-identical to an uninterrupted run. Rank 0 writes
`dataset.json` last, once every shard is finished, after a barrier.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError
from ..parallel.process_group import DistEnv, barrier, local_device
from .encoders import PixelEncoder, VaeEncoder
from .prep_sources import ImageSource, InputShard, open_source
from .image_transforms import center_crop_arr, to_unit_range
from .manifest import FORMAT_NAME, FORMAT_VERSION, write_manifest
from .sample_index import write_prep_index
from .shard_format import encode_sample, sample_key
from .shard_writer import (PROGRESS_DIR, finished_shard, read_prep_identity, write_prep_identity,
                           write_tar_shard)

DIGITS_RESOLUTION = 16   # the 8x8 digits, upsampled x2 (bicubic) so DiT-T/2 sees an 8x8 token grid
IMAGE_RESOLUTION = 256


@dataclass
class PrepConfig:
    source: str
    vae: str
    out: str
    resolution: int | None = None
    shard_size: int = 1000
    batch_size: int = 32
    vae_subfolder: str | None = None
    allow_download: bool = False
    num_classes: int | None = None
    max_shards_this_run: int | None = None
    progress: bool = True
    overwrite: bool = False  # write into a non-empty folder that prep did not create
    on_error: str = "raise"  # an unreadable image: raise (stop, naming it) | skip (leave it out, counted)
    store_images: bool = False  # also store the cropped uint8 image and its mirror (REPA)


class ForeignOutputFolder(UserError):
    """--out holds files that no prep run wrote (no `_progress/prep.json`, prep's marker)."""


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty --out without prep's marker: its files could be anyone's, and prep
    would replace those named like its shards. An empty or new folder, or one an earlier prep
    run marked (resume), is fine; `overwrite` accepts any folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ForeignOutputFolder(f"--out {out} is a file, not a directory; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries or read_prep_identity(out) is not None:
        return
    if not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ForeignOutputFolder(
            f"--out {out} holds {len(entries)} entries that prep did not write ({shown}; no "
            f"{PROGRESS_DIR}/prep.json): choose an empty or new --out, or pass --overwrite to write there anyway")
    print(f"prep: writing into {out}, which prep did not create (--overwrite): files named like its "
          "shards will be replaced", file=sys.stderr)


def _make_encoder(cfg: PrepConfig, source: ImageSource, env: DistEnv):
    if cfg.vae == "none":
        return PixelEncoder(channels=1 if source.native_mode == "L" else 3), source.native_mode
    return VaeEncoder(cfg.vae, subfolder=cfg.vae_subfolder, allow_download=cfg.allow_download,
                      device=local_device(env)), "RGB"


def image_pair(crop: np.ndarray) -> np.ndarray:
    """uint8 HWC/HW crop → (2, C, H, W) uint8: the image and its horizontal mirror, in the order
    the encoders store the two flips."""
    chw = crop[None] if crop.ndim == 2 else crop.transpose(2, 0, 1)
    return np.ascontiguousarray(np.stack([chw, chw[..., ::-1]]))


def _encode_shard(plan: InputShard, encoder, mode: str, resolution: int, batch_size: int, bar,
                  store_images: bool = False):
    """Yield the shard's samples in source order; batches never cross shard boundaries, so the
    bytes of a shard do not depend on which run or rank wrote it."""
    def flush(images, labels, start):
        arrays = encoder.encode(np.stack(images))
        for j, (arr, cls) in enumerate(zip(arrays, labels)):
            yield encode_sample(sample_key(plan.index, start + j), encoder.field, arr, cls,
                                image_pair(crops[j]) if store_images else None)
        if bar is not None:
            bar.update(len(images))

    images, labels, crops, start = [], [], [], 0
    for image, cls in plan.read():
        crop = center_crop_arr(image.convert(mode), resolution)
        images.append(to_unit_range(crop))
        crops.append(crop)
        labels.append(cls)
        if len(images) == batch_size:
            yield from flush(images, labels, start)
            start += len(images)
            images, labels, crops = [], [], []
    if images:
        yield from flush(images, labels, start)


def _check_identity(out: Path, identity: dict, env: DistEnv) -> None:
    existing = read_prep_identity(out)
    if existing is not None and existing != identity:
        diff = {k: (existing.get(k), identity.get(k)) for k in set(existing) | set(identity)
                if existing.get(k) != identity.get(k)}
        raise UserError(f"{out} holds shards from a different prep run (differs in {diff} as "
                         "(existing, now)); use a new --out directory or the same arguments to resume")
    if env.is_main and existing is None:
        write_prep_identity(out, identity)


def _sum_across_ranks(values: list[float], env: DistEnv) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=local_device(env))
    dist.all_reduce(t)
    return t.tolist()


def _manifest_doc(cfg, source, encoder, resolution, records, mode: str = "RGB") -> dict:
    num_classes = source.num_classes or cfg.num_classes
    max_class = max(r["max_class"] for r in records)
    if num_classes is None:
        num_classes = max_class + 1
    if max_class >= num_classes:
        raise UserError(f"--num-classes {num_classes}: the data has class {max_class}; pass "
                        f"--num-classes {max_class + 1} or more (or leave it out: largest label + 1)")
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "field": encoder.field,
        "latent_shape": list(encoder.latent_shape(resolution)), "latent_dtype": "float16",
        "scale_factor": encoder.scale_factor, "shift_factor": encoder.shift_factor,
        "num_classes": int(num_classes), "num_samples": sum(r["count"] for r in records),
        "resolution": resolution, "source": source.description, "vae": encoder.identity,
        "shards": [{k: r[k] for k in ("name", "count", "bytes", "sha256")} for r in records],
        **({"image_shape": [1 if mode == "L" else 3, resolution, resolution]} if cfg.store_images else {}),
    }


def check_num_classes(cfg: PrepConfig, source: ImageSource) -> None:
    """--num-classes must agree with a source that knows its classes (digits, class folders)."""
    if cfg.num_classes is None:
        return
    if not (cfg.num_classes >= 1):
        raise UserError(f"--num-classes: got {cfg.num_classes}; must be >= 1")
    if source.num_classes is not None and cfg.num_classes != source.num_classes:
        raise UserError(f"--num-classes {cfg.num_classes} disagrees with --source {cfg.source}, which has "
                        f"{source.num_classes} classes; leave --num-classes out (it is for tar sources)")


def run_prep(cfg: PrepConfig, env: DistEnv) -> int:
    """Encode this rank's shards; rank 0 then writes the manifest. Returns a process exit code."""
    out = Path(cfg.out)
    check_output_folder(out, cfg.overwrite)  # on every rank before any writes: same answer everywhere
    barrier()
    out.mkdir(parents=True, exist_ok=True)
    source = open_source(cfg.source, cfg.shard_size, cfg.on_error)
    check_num_classes(cfg, source)
    resolution = cfg.resolution or (DIGITS_RESOLUTION if cfg.source == "digits" else IMAGE_RESOLUTION)
    encoder, mode = _make_encoder(cfg, source, env)
    identity = {"source": source.description, "vae": encoder.identity, "resolution": resolution,
                "shard_size": cfg.shard_size, "mode": mode, "num_shards": len(source.shards)}
    if cfg.store_images:  # absent otherwise: folders prepped before the option still resume
        identity["store_images"] = True
    _check_identity(out, identity, env)
    barrier()

    mine = [p for p in source.shards if p.index % env.world_size == env.rank]
    todo = [p for p in mine if finished_shard(out, p.index) is None]
    bar = None
    if env.is_main and cfg.progress:
        from tqdm import tqdm
        sizes = [p.size for p in todo]
        bar = tqdm(total=sum(sizes) if None not in sizes else None, unit="img", dynamic_ncols=True,
                   desc=f"rank 0/{env.world_size} encoding {len(todo)} of {len(mine)} shards")
    t0 = time.perf_counter()
    written = samples = 0
    stopped_early = False
    for plan in todo:
        if cfg.max_shards_this_run is not None and written >= cfg.max_shards_this_run:
            stopped_early = True
            break
        record = write_tar_shard(out, plan.index,
                             _encode_shard(plan, encoder, mode, resolution, cfg.batch_size, bar,
                                           cfg.store_images))
        written += 1
        samples += record["count"]
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    tot_samples, tot_shards, stopped, skipped = _sum_across_ranks(
        [samples, written, float(stopped_early), len(source.skipped)], env)
    barrier()

    if not env.is_main:
        return 0
    records = [finished_shard(out, p.index) for p in source.shards]
    missing = [p.index for p, r in zip(source.shards, records) if r is None]
    summary = {"samples_encoded": int(tot_samples), "shards_written": int(tot_shards),
               "shards_total": len(source.shards), "seconds": round(seconds, 2),
               "img_per_s": round(tot_samples / seconds, 1) if seconds > 0 else 0.0,
               "world_size": env.world_size, "skipped_unreadable_images": int(skipped)}
    if missing:
        print(f"prep: {len(missing)} of {len(source.shards)} shards not finished yet "
              f"(stopped by --max-shards-this-run); rerun the same command to resume. "
              f"{json.dumps(summary)}", file=sys.stderr)
        return 0 if stopped else 1
    doc = write_prep_index(out, _manifest_doc(cfg, source, encoder, resolution, records, mode), records)
    path = write_manifest(out, doc)
    summary["num_samples"] = doc["num_samples"]
    print(f"prep: wrote {path} ({doc['num_samples']} samples in {len(records)} shards, "
          f"latent {doc['latent_shape']}, {doc['num_classes']} classes; progress records in "
          f"{out / PROGRESS_DIR}). This run: {json.dumps(summary)}")
    return 0
