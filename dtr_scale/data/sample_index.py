"""The sample index: where each sample's members lie in the shards, written once, memory-mapped.

`data.mode=global` reads single samples by position. Rather than every rank reading every tar
header at start, it opens one index file and memory-maps it: a rank touches only the rows of the
samples it reads, and the shards those samples lie in.

The file
--------
A `.npy` holding a structured array (loaded with allow_pickle=False: nothing in it can run
code), one row per sample in manifest order (shard by shard, tar order within a shard), with the
int64 fields `data_offset`, `data_size`, `cls_offset`, `cls_size`, `image_offset`, `image_size`
(the byte ranges of the array member named by the manifest's `field`, of the `.cls` member and of
the `.image.npy` member REPA reads; -1, 0 for a sample without a stored image) and `key` (bytes).
A row's shard follows from the manifest's per-shard counts, so no row can point at another shard.

Layout versions: 1 had no image columns; 2 (this one) has them. A version 1 index is never read
as version 2: prep's is passed over (the index is then built from the headers, as for a dataset
without one), a kept one is keyed by its version and so simply not found (see index_cache), and
a rows file of another layout is refused by `open_rows` with the fix in the message.

Integrity
---------
Each shard's rows have a sha256 (`rows_sha256`). A process checks it the first time it reads a
sample of that shard, before using any of the shard's rows: a changed, truncated or foreign
index is refused with an error naming the file, never used. Checking per shard keeps the
start-up cost to the shards of the first batch.

Where it lives
--------------
- Written by prep: `<data>/index.npy`, listed in dataset.json under "index", with each shard's
  "index_sha256", and the sha256 of the shard list it was written for (`write_prep_index`,
  called as prep writes the manifest; the member lists come from prep's per-shard progress
  records, written as each shard is written). If dataset.json's shard list changed since (a
  shard rewritten), the index is stale and not used: it is then built as for older datasets.
- Datasets written before the index existed: built once from the tar headers (`index_cache`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..file_hash import file_sha256
from .manifest import MANIFEST_NAME, Manifest
from .shard_format import DataError, count_mismatch
from .tar_index import index_shard, samples_from_members

log = logging.getLogger("dtr_scale.data")

INDEX_NAME = "index.npy"
INDEX_FORMAT = "dtr-scale-sample-index"
INDEX_VERSION = 2
COLUMNS = ("data_offset", "data_size", "cls_offset", "cls_size", "image_offset", "image_size")


def make_rows(samples: list[tuple[str, int, int, int, int, int, int]], key_bytes: int | None = None) -> np.ndarray:
    """Rows of the index from `tar_index.samples_from_members`' (key, data offset, data size, cls
    offset, cls size, image offset, image size) tuples."""
    keys = [key.encode("utf-8") for key, *_ in samples]
    width = key_bytes or max((len(k) for k in keys), default=1) or 1
    rows = np.zeros(len(samples), dtype=[*((c, "<i8") for c in COLUMNS), ("key", f"S{width}")])
    if samples:
        numbers = np.asarray([s[1:] for s in samples], dtype=np.int64)
        for j, c in enumerate(COLUMNS):
            rows[c] = numbers[:, j]
        rows["key"] = keys
    return rows


def rows_sha256(rows: np.ndarray) -> str:
    """sha256 of one shard's rows: the numbers as little-endian int64, then the keys joined by
    newlines (independent of the key field's width, so rows written alone and in the whole file
    hash alike)."""
    h = hashlib.sha256()
    h.update(np.stack([np.asarray(rows[c], dtype="<i8") for c in COLUMNS], axis=-1).tobytes())
    h.update(b"\n".join(rows["key"].tolist()))
    return h.hexdigest()


def scan_shard_rows(manifest: Manifest) -> list[np.ndarray]:
    """Each shard's rows, read from its tar headers (the way the index is built for datasets
    written before prep wrote it); the counts must match the manifest."""
    out = []
    for shard in manifest.shards:
        path = manifest.shard_path(shard)
        samples = index_shard(path, manifest.field)
        if len(samples) != shard.count:
            raise count_mismatch(path, len(samples), shard.count)
        out.append(make_rows(samples))
    return out


def join_rows(parts: list[np.ndarray]) -> np.ndarray:
    width = max(p.dtype["key"].itemsize for p in parts)
    return np.concatenate([p.astype([*((c, "<i8") for c in COLUMNS), ("key", f"S{width}")]) for p in parts])


def save_rows(path: str | os.PathLike, rows: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, rows, allow_pickle=False))


class SampleIndex:
    """Memory-mapped index rows plus what checks them; `entry(sample)` is all the loader needs."""

    def __init__(self, rows: np.ndarray, manifest: Manifest, shard_sha256: list[str], file: str, fix: str):
        self.rows, self.file, self._sha, self._fix = rows, file, list(shard_sha256), fix
        self.paths = tuple(manifest.shard_path(s) for s in manifest.shards)
        self.starts = np.concatenate([[0], np.cumsum([s.count for s in manifest.shards])]).astype(np.int64)
        self._checked: set[int] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def shard_of(self, sample: int) -> int:
        return int(np.searchsorted(self.starts, sample, side="right")) - 1

    def check_shard(self, k: int) -> None:
        if k in self._checked:
            return
        rows = self.rows[self.starts[k]:self.starts[k + 1]]
        if rows_sha256(rows) != self._sha[k]:
            raise DataError(f"sample index {self.file}: the rows of shard {self.paths[k]} do not match their "
                            f"sha256 (the index was changed, or belongs to other shards); it is not used: "
                            f"{self._fix}")
        self._checked.add(k)

    def entry(self, sample: int) -> tuple[int, str, int, int, int, int, int, int]:
        """(shard, key, data offset, data size, cls offset, cls size, image offset, image size) of
        one sample (image -1, 0 when it has none)."""
        k = self.shard_of(sample)
        self.check_shard(k)
        row = self.rows[sample]
        return (k, row["key"].decode("utf-8"), *(int(row[c]) for c in COLUMNS))


def open_rows(path: str | os.PathLike, num_samples: int, fix: str) -> np.ndarray:
    """Memory-map an index file and check its layout (not yet its contents: see SampleIndex)."""
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"sample index {path} is missing; {fix}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"sample index {path} cannot be read ({exc}); {fix}") from None
    names = rows.dtype.names or ()
    if set(names) == {*COLUMNS[:4], "key"}:
        raise DataError(f"sample index {path} has the layout of index version 1 (no image columns), not version "
                        f"{INDEX_VERSION}; {fix}")
    if (set(names) != {*COLUMNS, "key"} or rows.ndim != 1 or len(rows) != num_samples
            or any(rows.dtype[c] != np.dtype("<i8") for c in COLUMNS) or rows.dtype["key"].kind != "S"):
        raise DataError(f"sample index {path} holds {rows.dtype} of shape {rows.shape}, not the "
                        f"{num_samples} index rows {MANIFEST_NAME} describes; {fix}")
    return rows


def shard_list_sha256(shards) -> str:
    """sha256 of the manifest's shard list (name, count, bytes, sha256 of each): what the index
    was written for."""
    listing = [[s["name"], s["count"], s["bytes"], s["sha256"]] if isinstance(s, dict)
               else [s.name, s.count, s.bytes, s.sha256] for s in shards]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def prep_index(manifest: Manifest) -> SampleIndex | None:
    """The index prep wrote beside the shards; None for a dataset written before prep wrote one,
    or whose shard list changed since (a shard rewritten and dataset.json updated): the index
    then describes other bytes, and the caller builds one from the headers instead."""
    info = manifest.index
    if not info:
        return None
    if info.get("shards_sha256") != shard_list_sha256(manifest.shards):
        log.warning("data.mode=global: %s was written for other shards than %s now lists (a shard was "
                    "rewritten since prep); not used: the index is built from the tar headers instead",
                    manifest.root / str(info.get("name")), manifest.root / MANIFEST_NAME)
        return None
    fix = "re-copy it with the shards, or rerun prep"
    name = str(info.get("name", ""))
    if info.get("format") == INDEX_FORMAT and info.get("version") == 1:
        log.warning("data.mode=global: %s is a version 1 sample index (no image columns), not version %d; not "
                    "used: the index is built from the tar headers instead (rerun prep to rewrite it)",
                    manifest.root / name, INDEX_VERSION)
        return None
    if (info.get("format") != INDEX_FORMAT or info.get("version") != INDEX_VERSION or name != INDEX_NAME
            or any(not s.index_sha256 for s in manifest.shards)):
        raise DataError(f"{manifest.root / MANIFEST_NAME}: its \"index\" entry {info} is not a version "
                        f"{INDEX_VERSION} {INDEX_FORMAT} with an index_sha256 for every shard; rerun prep "
                        "with this version of dtr-scale")
    path = manifest.root / name
    rows = open_rows(path, manifest.num_samples, fix)
    return SampleIndex(rows, manifest, [s.index_sha256 for s in manifest.shards], str(path),
                       "rerun prep to rewrite it")


def write_prep_index(out: str | os.PathLike, doc: dict, records: list[dict]) -> dict:
    """Write `out/index.npy` from prep's shard records and return the manifest `doc` with the
    index listed. A record holds the member list prep read back from the shard it had just
    written; a shard finished by a prep run from before that has none, and is read here."""
    out = Path(out)
    parts = []
    for shard, record in zip(doc["shards"], records):
        path = str(out / shard["name"])
        members = record.get("members")
        samples = (index_shard(path, doc["field"]) if members is None
                   else samples_from_members(members, doc["field"], path))
        if len(samples) != shard["count"]:
            raise count_mismatch(path, len(samples), shard["count"])
        parts.append(make_rows(samples))
    path = out / INDEX_NAME
    save_rows(path, join_rows(parts))
    shards = [dict(s, index_sha256=rows_sha256(p)) for s, p in zip(doc["shards"], parts)]
    index = {"name": INDEX_NAME, "format": INDEX_FORMAT, "version": INDEX_VERSION,
             "bytes": path.stat().st_size, "sha256": file_sha256(path),
             "shards_sha256": shard_list_sha256(doc["shards"])}
    return dict(doc, shards=shards, index=index)
