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
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from PIL import Image

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


def imagefolder_source(root: str, shard_size: int) -> ImageSource:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"imagefolder source {root!r} is not a directory; expected "
                                "DIR/<class name>/<images> (the ImageNet train layout)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"imagefolder source {root!r} has no class sub-folders; expected "
                         "DIR/<class name>/<images>")
    items: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames.sort()  # os.walk order is filesystem order; sort for a stable plan
            for fn in sorted(filenames):
                if fn.lower().endswith(IMAGE_EXTENSIONS):
                    items.append((os.path.join(dirpath, fn), label))
    if not items:
        raise ValueError(f"imagefolder source {root!r} has class folders but no images "
                         f"(extensions {IMAGE_EXTENSIONS})")

    def reader(idx: range):
        def read():
            for i in idx:
                path, label = items[i]
                with Image.open(path) as im:
                    im.load()
                    yield im, label
        return read

    plans = tuple(InputShard(k, reader(r), len(r)) for k, r in enumerate(_chunks(len(items), shard_size)))
    return ImageSource(f"imagefolder:{root}", "RGB", len(classes), plans)


def _tar_samples(path: str) -> Iterator[tuple[Image.Image, int]]:
    """Samples of one image tar in member order, grouped by key (the name before the first dot)."""
    def finish(key, fields):
        img_field = next((f for f in TAR_IMAGE_FIELDS if f in fields), None)
        cls_field = next((f for f in TAR_CLASS_FIELDS if f in fields), None)
        if img_field is None or cls_field is None:
            raise ValueError(f"sample {key!r} in {path} lacks an image ({TAR_IMAGE_FIELDS}) or a "
                             f"class ({TAR_CLASS_FIELDS}); it has {sorted(fields)}")
        with Image.open(io.BytesIO(fields[img_field])) as im:
            im.load()
            return im, int(fields[cls_field].decode("ascii").strip())

    key, fields = None, {}
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
                yield finish(key, fields)
                fields = {}
            key = k
            fields[ext.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield finish(key, fields)


def tar_source(pattern: str) -> ImageSource:
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"tar source {pattern!r} matches no files")
    plans = tuple(InputShard(k, (lambda p=p: _tar_samples(p))) for k, p in enumerate(paths))
    return ImageSource(f"tar:{pattern}", "RGB", None, plans)


def open_source(spec: str, shard_size: int) -> ImageSource:
    """Parse `digits`, `imagefolder:DIR` or `tar:GLOB`."""
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if spec == "digits":
        return digits_source(shard_size)
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder" and arg:
        return imagefolder_source(arg, shard_size)
    if kind == "tar" and arg:
        return tar_source(arg)
    raise ValueError(f"unknown --source {spec!r}; use digits, imagefolder:DIR or tar:GLOB")
