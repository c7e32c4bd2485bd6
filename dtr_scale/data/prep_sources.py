"""Image sources for prep, each cut into a fixed, ordered list of output shards.

Every rank builds the same plan from the same source (a sorted file listing, or the bundled
digits array), so shard i of the plan is the same images in the same order on every rank and in
every run. That is what makes prep resumable and its output reproducible.

- ``digits``: scikit-learn's bundled handwritten digits, 1797 8x8 images with values 0..16,
  10 classes. Converted to 8-bit grayscale as round(v * 255 / 16).
- ``imagefolder:DIR``: DIR/<class name>/**/<image>; classes are the sorted folder names
  (ImageNet's train layout). Files are taken in sorted path order.
- ``tar:GLOB``: tars of images with class labels, e.g. WebDataset image shards with a ``cls``
  member per sample. Each input tar (sorted glob order) becomes one output shard.
"""
from __future__ import annotations

import glob
import io
import os
import sys
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from ..errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
TAR_IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm")
TAR_CLASS_FIELDS = ("cls", "cls.txt", "class", "label", "class.txt")


@dataclass(frozen=True)
class InputShard:
    """The images of one prep output shard (`ImageSource.shards[i]` becomes shard i)."""
    index: int
    read: Callable[[], Iterator[tuple[Image.Image, int]]]  # images of this shard, in order
    size: int | None = None  # number of images, when known without reading


@dataclass(frozen=True)
class ImageSource:
    description: str            # recorded in the manifest
    native_mode: str            # "L" (grayscale) or "RGB": the channels used in pixel mode
    num_classes: int | None     # None: known only after reading (tar sources)
    shards: tuple[InputShard, ...]
    skipped: list = field(default_factory=list)  # unreadable images left out (--on-error skip)


ON_ERROR = ("raise", "skip")


class _Unreadable:
    """What to do with an image that does not decode: stop naming it, or skip it and count."""

    def __init__(self, on_error: str, skipped: list):
        if on_error not in ON_ERROR:
            raise UserError(f"--on-error: got {on_error!r}; allowed: raise | skip")
        self.on_error, self.skipped = on_error, skipped

    def __call__(self, where: str, exc: Exception) -> None:
        if self.on_error == "raise":
            raise UserError(f"image {where} cannot be decoded ({type(exc).__name__}: {exc}); replace or "
                            "remove it, or pass --on-error skip to leave unreadable images out (counted)") from None
        self.skipped.append(where)
        print(f"prep: skipping unreadable image {where} ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)


def _decode(data_or_path, where: str, unreadable: _Unreadable) -> Image.Image | None:
    """The decoded image, or None when it is unreadable and skipped. PIL raises several types
    for a broken file (OSError for truncation, UnidentifiedImageError, SyntaxError, ValueError)."""
    try:
        image = Image.open(data_or_path)
        image.load()  # decodes now (a broken file fails here) and closes a file Pillow opened
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        unreadable(where, exc)
        return None


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def digits_source(shard_size: int) -> ImageSource:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(int)

    def reader(idx: range):
        def read():
            for i in idx:
                yield Image.fromarray(pixels[i], mode="L"), int(labels[i])
        return read

    plans = tuple(InputShard(k, reader(r), len(r)) for k, r in enumerate(_chunks(len(labels), shard_size)))
    return ImageSource("digits", "L", 10, plans)


def imagefolder_source(root: str, shard_size: int, on_error: str = "raise") -> ImageSource:
    if not os.path.isdir(root):
        raise UserError(f"imagefolder source {root!r} is not a directory; expected "
                                "DIR/<class name>/<images> (the ImageNet train layout)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"imagefolder source {root!r} has no class sub-folders; expected "
                         "DIR/<class name>/<images>")
    items: list[tuple[str, int]] = []
    empty = []
    for label, name in enumerate(classes):
        before = len(items)
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames.sort()  # os.walk order is filesystem order; sort for a stable plan
            for fn in sorted(filenames):
                if fn.lower().endswith(IMAGE_EXTENSIONS):
                    items.append((os.path.join(dirpath, fn), label))
        if len(items) == before:
            empty.append(name)
    if not items:
        raise UserError(f"imagefolder source {root!r} has class folders but no images "
                        f"(extensions {IMAGE_EXTENSIONS})")
    if empty:
        # Class indices are the sorted folder names: an empty folder would still take an index
        # and leave a class with no training data.
        raise UserError(f"imagefolder source {root!r}: class folder(s) {empty[:5]} hold no images "
                        f"({len(empty)} of {len(classes)}); add images or remove the folder(s)")
    skipped: list = []
    unreadable = _Unreadable(on_error, skipped)

    def reader(idx: range):
        def read():
            for i in idx:
                path, label = items[i]
                image = _decode(path, path, unreadable)
                if image is not None:
                    yield image, label
        return read

    plans = tuple(InputShard(k, reader(r), len(r)) for k, r in enumerate(_chunks(len(items), shard_size)))
    return ImageSource(f"imagefolder:{root}", "RGB", len(classes), plans, skipped)


def tar_label(raw: bytes, where: str) -> int:
    """A sample's class: a non-negative decimal integer (negative labels would index nothing)."""
    try:
        label = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{where}: class {raw[:20]!r} is not an integer; labels must be 0..num_classes-1") from None
    if label < 0:
        raise UserError(f"{where}: class {label} is negative; labels must be 0..num_classes-1 (renumber them)")
    return label


def _tar_samples(path: str, unreadable: _Unreadable) -> Iterator[tuple[Image.Image, int]]:
    """Samples of one image tar in member order, grouped by key (the name before the first dot)."""
    def finish(key, fields):
        img_field = next((f for f in TAR_IMAGE_FIELDS if f in fields), None)
        cls_field = next((f for f in TAR_CLASS_FIELDS if f in fields), None)
        where = f"sample {key!r} in {path}"
        if img_field is None or cls_field is None:
            raise UserError(f"{where} lacks an image ({TAR_IMAGE_FIELDS}) or a "
                            f"class ({TAR_CLASS_FIELDS}); it has {sorted(fields)}")
        label = tar_label(fields[cls_field], where)
        image = _decode(io.BytesIO(fields[img_field]), f"{key}.{img_field} in {path}", unreadable)
        return None if image is None else (image, label)

    key, fields = None, {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                dirname, base = os.path.split(member.name)
                if "." not in base:
                    continue
                k, ext = base.split(".", 1)
                k = os.path.join(dirname, k)
                if k != key and key is not None:
                    if (done := finish(key, fields)) is not None:
                        yield done
                    fields = {}
                key = k
                fields[ext.lower()] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise UserError(f"{path} is not a readable tar ({exc}); re-copy it") from None
    if key is not None and (done := finish(key, fields)) is not None:
        yield done


def tar_source(pattern: str, on_error: str = "raise") -> ImageSource:
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"tar source {pattern!r} matches no files")
    skipped: list = []
    unreadable = _Unreadable(on_error, skipped)
    plans = tuple(InputShard(k, (lambda p=p: _tar_samples(p, unreadable))) for k, p in enumerate(paths))
    return ImageSource(f"tar:{pattern}", "RGB", None, plans, skipped)


def open_source(spec: str, shard_size: int, on_error: str = "raise") -> ImageSource:
    """Parse `digits`, `imagefolder:DIR` or `tar:GLOB`."""
    if not (shard_size >= 1):
        raise UserError(f"--shard-size: got {shard_size}; must be >= 1")
    if spec == "digits":
        return digits_source(shard_size)
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder" and arg:
        return imagefolder_source(arg, shard_size, on_error)
    if kind == "tar" and arg:
        return tar_source(arg, on_error)
    raise UserError(f"unknown --source {spec!r}; use digits, imagefolder:DIR or tar:GLOB")
