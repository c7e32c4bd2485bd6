"""The sample index of a dataset written before prep wrote one: built once, kept, reused.

Keyed by the sha256 of the dataset's `dataset.json` and the index layout version, the index is
two files in one folder: `<sha256>.v<version>.json` (what it belongs to, and each shard's rows
sha256) and the rows file it names (`<sha256>.v<version>.<unique>.npy`, see sample_index for the
layout). An index kept by a version of dtr-scale with another layout has another name, so it is
not found, and a new one is built beside it (the old files are left alone: not ours to delete).
The folder is

1. `<data>/_index/` when the data folder is writable (beside the shards: every job using the
   data finds it), else
2. `$DTR_SCALE_INDEX_CACHE` if set, else `$XDG_CACHE_HOME/dtr-scale/index` (default
   `~/.cache/dtr-scale/index`).

Writing never replaces a file: the rows go to a new unique name, and the `.json` (whose
presence says the index is complete) is linked into place, which fails if it exists (then the
other writer's index is used and ours removed). An index whose `.json` does not match this
dataset.json, or whose rows do not match their sha256s, is refused with an error naming the
file to delete; it is not rebuilt over, since this process cannot know it wrote it.

With several processes (torch.distributed initialised), rank 0 builds first, then one process
per node where rank 0's folder is not visible, then any others; the rest only read.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path

from ..atomic import temp_name
from ..file_hash import file_sha256
from ..parallel.process_group import barrier
from .manifest import MANIFEST_NAME, Manifest
from .sample_index import (
    INDEX_FORMAT,
    INDEX_VERSION,
    SampleIndex,
    join_rows,
    open_rows,
    rows_sha256,
    save_rows,
    scan_shard_rows,
)
from .shard_format import DataError

log = logging.getLogger("dtr_scale.data")

DATA_INDEX_DIR = "_index"


def cache_root() -> Path:
    if os.environ.get("DTR_SCALE_INDEX_CACHE"):
        return Path(os.environ["DTR_SCALE_INDEX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dtr-scale" / "index"


def index_folders(manifest: Manifest) -> list[Path]:
    return [manifest.root / DATA_INDEX_DIR, cache_root()]


def meta_name(digest: str) -> str:
    return f"{digest}.v{INDEX_VERSION}.json"


def _open_cached(meta_path: Path, manifest: Manifest, digest: str) -> SampleIndex:
    fix = f"delete {meta_path} (and the rows file beside it it names) to have it rebuilt"
    try:
        meta = json.loads(meta_path.read_text())
        rows_name = str(meta["rows"])
        listed = [(s["name"], int(s["count"])) for s in meta["shards"]]
        hashes = [str(s["index_sha256"]) for s in meta["shards"]]
        ok = (meta["format"] == INDEX_FORMAT and meta["version"] == INDEX_VERSION
              and meta["manifest_sha256"] == digest and "/" not in rows_name and "\\" not in rows_name
              and listed == [(s.name, s.count) for s in manifest.shards])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"sample index {meta_path} cannot be read ({type(exc).__name__}: {exc}); {fix}") from None
    if not ok:
        raise DataError(f"sample index {meta_path} does not belong to {manifest.root / MANIFEST_NAME} "
                        f"(sha256 {digest[:16]}...: other shards, or a changed index); it is not used: {fix}")
    rows = open_rows(meta_path.parent / rows_name, manifest.num_samples, fix)
    return SampleIndex(rows, manifest, hashes, str(meta_path.parent / rows_name), fix)


def find_cached(manifest: Manifest, digest: str) -> SampleIndex | None:
    for folder in index_folders(manifest):
        meta = folder / meta_name(digest)
        if meta.is_file():
            return _open_cached(meta, manifest, digest)
    return None


def _write(folder: Path, manifest: Manifest, digest: str, parts) -> Path:
    """Write the index into `folder` without replacing anything; the path of the .json in place
    (ours, or one another process linked first). OSError when the folder is not writable."""
    folder.mkdir(parents=True, exist_ok=True)
    rows_path = folder / f"{digest}.v{INDEX_VERSION}.{os.getpid()}-{secrets.token_hex(4)}.npy"  # new: replaces nothing
    save_rows(rows_path, join_rows(parts))
    meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "manifest_sha256": digest,
            "data_folder": str(manifest.root), "rows": rows_path.name, "built_unix": int(time.time()),
            "shards": [{"name": s.name, "count": s.count, "index_sha256": rows_sha256(p)}
                       for s, p in zip(manifest.shards, parts)]}
    meta_path = folder / meta_name(digest)
    tmp = temp_name(meta_path)
    try:
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, meta_path)  # atomic, and fails rather than replace another writer's file
        except FileExistsError:
            os.remove(rows_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return meta_path


def build_cached(manifest: Manifest, digest: str) -> SampleIndex:
    """Read every shard's headers once and keep the index in the first writable folder."""
    t0 = time.perf_counter()
    parts = scan_shard_rows(manifest)
    tried = []
    for folder in index_folders(manifest):
        try:
            meta_path = _write(folder, manifest, digest, parts)
        except OSError as exc:
            tried.append(f"{folder} ({exc.strerror or exc})")
            continue
        log.info("data.mode=global: indexed %d samples of %s in %.1f s (once; dataset written before "
                 "prep wrote the index): kept in %s", manifest.num_samples, manifest.root,
                 time.perf_counter() - t0, meta_path)
        return _open_cached(meta_path, manifest, digest)
    raise DataError(f"cannot keep the sample index of {manifest.root}: no writable folder among "
                    f"{'; '.join(tried)}; set DTR_SCALE_INDEX_CACHE to a writable folder")


def cached_index(manifest: Manifest, rank: int = 0) -> SampleIndex:
    """The kept index of an older dataset, built here if no process has built it yet."""
    digest = file_sha256(manifest.root / MANIFEST_NAME)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return find_cached(manifest, digest) or build_cached(manifest, digest)
    # In turns, so that 512 ranks do not all read every header: rank 0 first; then one process
    # per node that cannot see rank 0's folder (a node-local cache); then anyone still without.
    found = (find_cached(manifest, digest) or build_cached(manifest, digest)) if rank == 0 else None
    barrier()
    if found is None:
        found = find_cached(manifest, digest)
        if found is None and int(os.environ.get("LOCAL_RANK", "0")) == 0:
            found = build_cached(manifest, digest)
    barrier()
    return found or find_cached(manifest, digest) or build_cached(manifest, digest)
