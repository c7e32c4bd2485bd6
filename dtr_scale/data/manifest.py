"""`dataset.json`: the manifest written last by prep and read first by the loader.

Layout (all keys always present; the file is byte-identical for identical inputs, so it holds
no timestamps and no output paths)::

    {
      "format": "dtr-scale-latents", "version": 1,
      "field": "moments.npy" | "latent.npy",      # see dtr_scale.data.shard_format
      "latent_shape": [C, H, W], "latent_dtype": "float16",
      "scale_factor": 0.18215, "shift_factor": 0.0,
      "num_classes": 10, "num_samples": 1797,
      "resolution": 16, "source": "digits",
      "vae": {"name": "none"} | {"name": PATH_OR_ID, "class": "AutoencoderKL",
                                 "subfolder": ..., "config_sha256": ...},
      "shards": [{"name": "shard-000000.tar", "count": 200, "bytes": N, "sha256": HEX}, ...]
    }
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..file_hash import file_sha256

log = logging.getLogger("dtr_scale.data")

MANIFEST_NAME = "dataset.json"
FORMAT_NAME = "dtr-scale-latents"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    root: Path                      # directory holding the manifest and the shards
    field: str
    latent_shape: tuple[int, int, int]
    scale_factor: float
    shift_factor: float
    num_classes: int
    shards: tuple[ShardInfo, ...]
    vae: dict = field(default_factory=dict)
    resolution: int = 0
    source: str = ""

    @property
    def num_samples(self) -> int:
        return sum(s.count for s in self.shards)

    def shard_path(self, shard: ShardInfo) -> str:
        return str(self.root / shard.name)


def manifest_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_manifest(out_dir: str | os.PathLike, doc: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    atomic_write_bytes(path, manifest_bytes(doc))
    return path


def _manifest_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read `dataset.json` from a shard directory (or the file itself)."""
    file = _manifest_file(path)
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} at {file}. It is written last by `python -m dtr_scale.prep`; "
            "if prep was interrupted, rerun the same prep command to finish (it resumes)."
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON ({exc}); rerun prep to rewrite it") from None
    if doc.get("format") != FORMAT_NAME:
        raise ValueError(f"{file} is not a dtr-scale latent manifest (format={doc.get('format')!r})")
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{file} has manifest version {doc.get('version')}, this code reads "
                         f"{FORMAT_VERSION}; re-run prep with this version of dtr-scale")
    try:
        return Manifest(
            root=file.parent,
            field=doc["field"],
            latent_shape=tuple(int(v) for v in doc["latent_shape"]),
            scale_factor=float(doc["scale_factor"]),
            shift_factor=float(doc.get("shift_factor", 0.0)),
            num_classes=int(doc["num_classes"]),
            shards=tuple(ShardInfo(s["name"], int(s["count"]), int(s["bytes"]), s["sha256"])
                         for s in doc["shards"]),
            vae=dict(doc.get("vae", {})),
            resolution=int(doc.get("resolution", 0)),
            source=str(doc.get("source", "")),
        )
    except KeyError as exc:
        raise ValueError(f"{file} lacks the key {exc}; rerun prep to rewrite it") from None


def check_data_path(path) -> Manifest:
    """Fail early and clearly on a bad data path; call it BEFORE starting a process group.

    Checks that the path is set, exists, holds a readable manifest, and that every listed shard
    file exists. Shard sizes (and optionally hashes) are checked by `verify_shards`, which the
    loader calls once at start, so that one bad shard can be skipped and counted instead of
    stopping a long run.
    """
    if path is None or str(path).strip() == "":
        raise ValueError("data.path is empty: set it to a directory written by "
                         "`python -m dtr_scale.prep --out DIR` (e.g. data.path=DIR)")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data path {p} does not exist; create it with "
                                f"`python -m dtr_scale.prep --source ... --out {p}`")
    if p.is_dir() and not any(p.iterdir()):
        raise FileNotFoundError(f"data path {p} is an empty directory; fill it with "
                                f"`python -m dtr_scale.prep --source ... --out {p}`")
    manifest = read_manifest(p)
    if not manifest.shards or manifest.num_samples == 0:
        raise ValueError(f"{_manifest_file(p)} lists no samples; rerun prep on a non-empty source")
    missing = [s.name for s in manifest.shards if not (manifest.root / s.name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) listed in {_manifest_file(p)} are missing "
                                f"from {manifest.root}: {missing[:5]}; copy them or rerun prep")
    return manifest


def shard_problem(manifest: Manifest, shard: ShardInfo, verify_sha256: bool) -> str | None:
    """Why this shard does not match the manifest (size always, sha256 if asked), or None."""
    path = manifest.shard_path(shard)
    try:
        actual = os.path.getsize(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if actual != shard.bytes:
        return (f"is {actual} bytes, dataset.json says {shard.bytes} (truncated or replaced); "
                "re-copy it or rerun prep")
    if verify_sha256 and file_sha256(path) != shard.sha256:
        return "fails its sha256 check against dataset.json (corrupt); re-copy it or rerun prep"
    return None


def verify_shards(manifest: Manifest, on_error: str = "skip", verify_sha256: bool = False, *,
                  warn: bool = True) -> tuple[list[ShardInfo], list[tuple[str, str]]]:
    """Check every shard against the manifest once, before training reads any of them.

    Returns (good shards in manifest order, [(file, reason)] for the bad ones). With
    on_error="raise" a bad shard raises DataError naming the file(s) and the sizes instead; with
    "skip" the bad ones are named in one warning (if `warn`: callers on several ranks let only
    one rank warn) and the caller reads the good ones only. Reading every byte for sha256 is
    the expensive part, which is why it is optional (data.verify_sha256).
    """
    from .shard_format import DataError  # shard_format is the home of the data errors

    if on_error not in ("skip", "raise"):
        raise ValueError(f"data.on_error: got {on_error!r}, allowed: 'skip', 'raise'")
    good, bad = [], []
    for shard in manifest.shards:
        problem = shard_problem(manifest, shard, verify_sha256)
        if problem is None:
            good.append(shard)
        else:
            bad.append((manifest.shard_path(shard), problem))
    if not bad:
        return good, bad
    listing = "; ".join(f"{file} {why}" for file, why in bad)
    if on_error == "raise":
        raise DataError(f"{len(bad)} of {len(manifest.shards)} shard(s) do not match "
                        f"{manifest.root / MANIFEST_NAME}: {listing} (data.on_error=raise)")
    if not good:
        raise DataError(f"every shard listed in {manifest.root / MANIFEST_NAME} is bad: {listing}")
    if warn:
        log.warning("data.on_error=skip: leaving out %d of %d shard(s) for the whole run "
                    "(counted in data_errors): %s", len(bad), len(manifest.shards), listing)
    return good, bad
