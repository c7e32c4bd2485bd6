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
      "shards": [{"name": "shard-000000.tar", "count": 200, "bytes": N, "sha256": HEX,
                  "index_sha256": HEX}, ...],
      "index": {"name": "index.npy", "format": "dtr-scale-sample-index", "version": 1,
                "bytes": N, "sha256": HEX, "shards_sha256": HEX}
    }

"index" and the shards' "index_sha256" (the sample index, see sample_index.py) are written by prep
since the index was added; manifests without them are read as before, and data.mode=global then
builds the index once.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..atomic import atomic_write_bytes
from ..file_hash import file_sha256
from ..errors import UserError

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
    index_sha256: str = ""          # sha256 of this shard's rows of the sample index ("": none)


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
    index: dict = field(default_factory=dict)  # the prep-written sample index ({}: none)
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of the stored images (prep --store-images)

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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not valid JSON ({exc}); rerun prep to rewrite it") from None
    except OSError as exc:
        raise UserError(f"{file} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if not isinstance(doc, dict):
        raise UserError(f"{file} holds a JSON {type(doc).__name__}, not a dtr-scale latent manifest; "
                        "rerun prep to rewrite it")
    if doc.get("format") != FORMAT_NAME:
        raise UserError(f"{file} is not a dtr-scale latent manifest (format={doc.get('format')!r}); "
                        "point data.path at a folder written by `python -m dtr_scale.prep`")
    if doc.get("version") != FORMAT_VERSION:
        raise UserError(f"{file} has manifest version {doc.get('version')}, this code reads "
                        f"{FORMAT_VERSION}; re-run prep with this version of dtr-scale")
    try:
        manifest = Manifest(
            root=file.parent,
            field=doc["field"],
            latent_shape=tuple(int(v) for v in doc["latent_shape"]),
            scale_factor=float(doc["scale_factor"]),
            shift_factor=float(doc.get("shift_factor", 0.0)),
            num_classes=int(doc["num_classes"]),
            shards=tuple(ShardInfo(s["name"], int(s["count"]), int(s["bytes"]), s["sha256"],
                                   str(s.get("index_sha256", ""))) for s in doc["shards"]),
            vae=dict(doc.get("vae", {})),
            resolution=int(doc.get("resolution", 0)),
            source=str(doc.get("source", "")),
            index=dict(doc.get("index", {})),
            image_shape=tuple(int(v) for v in doc["image_shape"]) if doc.get("image_shape") else None,
        )
    except KeyError as exc:
        raise UserError(f"{file} lacks the key {exc}; rerun prep to rewrite it") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type
        raise UserError(f"{file} has a malformed value ({type(exc).__name__}: {exc}); rerun prep to "
                        "rewrite it") from None
    _check_manifest_values(manifest, file)
    return manifest


def _check_manifest_values(m: Manifest, file: Path) -> None:
    """Values a hand-edited or foreign manifest can get wrong, refused before any shard is read."""
    if len(m.latent_shape) != 3 or min(m.latent_shape) < 1:
        raise UserError(f"{file}: latent_shape {list(m.latent_shape)} is not [C, H, W] with positive "
                        "sizes; rerun prep to rewrite it")
    if m.num_classes < 1:
        raise UserError(f"{file}: num_classes is {m.num_classes}; it must be >= 1 (rerun prep)")
    if not (math.isfinite(m.scale_factor) and m.scale_factor > 0 and math.isfinite(m.shift_factor)):
        raise UserError(f"{file}: scale_factor {m.scale_factor} / shift_factor {m.shift_factor} must be "
                        "finite with scale_factor > 0 (0.18215 for SD-VAE, 1.0 in pixel mode)")
    for s in m.shards:
        # A shard name is a file beside the manifest: '../x' or an absolute path would make the
        # loader read (and sha256-check against) files outside the data folder.
        name = PurePosixPath(s.name)
        if (not s.name or name.is_absolute() or Path(s.name).is_absolute() or ".." in name.parts
                or "\\" in s.name or len(name.parts) != 1):
            raise UserError(f"{file}: shard name {s.name!r} points outside {m.root}; shard names must be "
                            "plain file names in the data folder (as prep writes them): fix dataset.json "
                            "or rerun prep")
        if s.count < 0 or s.bytes < 0:
            raise UserError(f"{file}: shard {s.name} has count {s.count} / bytes {s.bytes}; both must be "
                            ">= 0 (rerun prep)")


def check_data_path(path, first_sample: bool = True) -> Manifest:
    """Fail early and clearly on a bad data path; call it BEFORE starting a process group.

    Checks that the path is set, exists, holds a readable manifest, that every listed shard
    file exists, and (if `first_sample`) that the first sample matches the manifest. Shard sizes (and optionally hashes) are checked by `verify_shards`, which the
    loader calls once at start, so that one bad shard can be skipped and counted instead of
    stopping a long run.
    """
    if path is None or str(path).strip() == "":
        raise UserError("data.path is empty: set it to a directory written by "
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
        raise UserError(f"{_manifest_file(p)} lists no samples; rerun prep on a non-empty source")
    missing = [s.name for s in manifest.shards if not (manifest.root / s.name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) listed in {_manifest_file(p)} are missing "
                                f"from {manifest.root}: {missing[:5]}; copy them or rerun prep")
    if first_sample:  # data.mode=global checks every sample it reads instead (its index says where)
        check_first_sample(manifest)
    return manifest


def check_first_sample(manifest: Manifest) -> None:
    """Read the first sample of the first non-empty shard and check it against the manifest
    (field, array shape, class range). One small read: it catches a dataset.json that describes
    other shards (edited, or copied from another prep run) before any process group starts,
    instead of every sample being skipped as bad later."""
    import tarfile

    from .shard_format import DataError, check_sample, stored_shape

    shard = next((s for s in manifest.shards if s.count > 0), None)
    if shard is None:
        return
    path = manifest.shard_path(shard)
    fields: dict = {}
    key = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, name = os.path.basename(member.name).partition(".")
                if key is not None and k != key:
                    break
                key = k
                fields[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"shard {path} cannot be read as a tar ({exc}); re-copy it or rerun prep") from None
    if key is None:
        raise DataError(f"shard {path} holds no samples but {_manifest_file(manifest.root)} lists "
                        f"{shard.count}; re-copy it or rerun prep")
    sample = {"__key__": key, "__url__": path, **fields}
    try:
        check_sample(sample, manifest.field, stored_shape(manifest.field, manifest.latent_shape),
                     manifest.num_classes)
    except DataError as exc:
        raise DataError(f"{exc}: {manifest.root / MANIFEST_NAME} does not describe these shards "
                        f"(field {manifest.field}, latent_shape {list(manifest.latent_shape)}, "
                        f"num_classes {manifest.num_classes}); rerun prep, or point data.path at the "
                        "folder this manifest was written for") from None


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
        raise UserError(f"data.on_error: got {on_error!r}, allowed: 'skip', 'raise'")
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
