"""Writing one output shard reproducibly and atomically, and recognising finished shards.

A shard is written to `.shard-NNNNNN.tar.partial`, fsynced, hashed, its record written to
`_progress/shard-NNNNNN.json`, and only then renamed to `shard-NNNNNN.tar`. A shard counts as
finished when both the tar and its record exist and agree on the size, so a crash at any point
leaves either a finished shard or one that the next run rewrites from scratch.

Reproducibility: webdataset's TarWriter stamps each member with `time.time()` unless given
`mtime`; we pass mtime=0 and fixed owner names, write members in sorted field order (TarWriter
sorts them) and use plain, uncompressed tar (gzip would add its own timestamp). Equal samples in
equal order therefore give byte-identical shards.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable

import webdataset as wds

from ..atomic import atomic_write_bytes
from ..file_hash import file_sha256
from .tar_index import tar_members

PROGRESS_DIR = "_progress"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _record_path(out_dir: Path, index: int) -> Path:
    return out_dir / PROGRESS_DIR / f"shard-{index:06d}.json"


def finished_shard(out_dir: str | os.PathLike, index: int) -> dict | None:
    """The record of shard `index` if it was completely written by an earlier run, else None."""
    out_dir = Path(out_dir)
    tar, rec = out_dir / shard_name(index), _record_path(out_dir, index)
    if not (tar.is_file() and rec.is_file()):
        return None
    try:
        record = json.loads(rec.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("bytes") == tar.stat().st_size else None


def write_tar_shard(out_dir: str | os.PathLike, index: int, samples: Iterable[dict]) -> dict:
    """Write `samples` (raw-bytes dicts, see shard_format.encode_sample) as shard `index`.

    Returns the shard's record: name, count, bytes, sha256, max_class, members.
    """
    out_dir = Path(out_dir)
    (out_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    final = out_dir / shard_name(index)
    partial = out_dir / f".{shard_name(index)}.partial"
    count, max_class = 0, -1
    with open(partial, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=0.0, user="dtr", group="dtr", mode=0o444)
        for sample in samples:
            writer.write(sample)
            count += 1
            max_class = max(max_class, int(sample["cls"]))
        writer.close()  # ends the tar stream; the file object stays ours to sync
        f.flush()
        os.fsync(f.fileno())
    # The member list (name, data offset, size) becomes the shard's rows of the sample index
    # (sample_index.write_prep_index), read back now while the file is in the page cache.
    record = {"name": final.name, "count": count, "bytes": partial.stat().st_size,
              "sha256": file_sha256(partial), "max_class": max_class,
              "members": [list(m) for m in tar_members(str(partial))]}
    atomic_write_bytes(_record_path(out_dir, index), json.dumps(record, sort_keys=True).encode())
    if final.exists():  # an unfinished shard of ours, or a file --overwrite let us replace: say so
        print(f"prep: replacing {final}", file=sys.stderr)
    os.replace(partial, final)
    return record


def read_prep_identity(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / PROGRESS_DIR / "prep.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_prep_identity(out_dir: str | os.PathLike, identity: dict) -> None:
    path = Path(out_dir) / PROGRESS_DIR / "prep.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(identity, sort_keys=True, indent=2).encode())
