"""data.mode=global with REPA's stored images: the sample index records each sample's image
member, the loader yields the image of the flip each latent was drawn from (checked against the
tar read directly), and an index of the old layout (no image columns) is never misread.
Real prep (--store-images), real tars."""
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch

from dtr_scale.data import DataError, GlobalLoader
from dtr_scale.data.index_cache import DATA_INDEX_DIR
from dtr_scale.data.sample_index import COLUMNS, INDEX_NAME, INDEX_VERSION
from dtr_scale.prep import main as prep_main


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    """digits at 8x8 pixels with their images stored, 4 shards of 500 (the last 297)."""
    out = tmp_path_factory.mktemp("prep") / "digits"
    assert prep_main(["--source", "digits", "--vae", "none", "--out", str(out), "--resolution", "8",
                      "--shard-size", "500", "--no-progress", "--store-images"]) == 0
    return out


@pytest.fixture
def data(prepped, tmp_path):
    return shutil.copytree(prepped, tmp_path / "data")


def from_tar(path, key):
    """(latent pair, image pair) of one sample, read from its shard with tarfile."""
    with tarfile.open(path) as tar:
        def member(field):
            return np.load(io.BytesIO(tar.extractfile(f"{key}.{field}").read()), allow_pickle=False)
        return member("latent.npy"), member("image.npy")


def test_global_mode_yields_the_image_of_the_latents_flip(prepped):
    loader = GlobalLoader(prepped, 32, rank=1, world_size=2, seed=5, images=True)
    batch = next(iter(loader))
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (16, 1, 8, 8)
    flips = []
    for p, s, x, image in zip(batch.positions.tolist(), loader.dataset.order.samples(batch.positions.numpy()),
                              batch.x, batch.images):
        shard, key, *_ = loader.index.entry(int(s))
        latents, images = from_tar(loader.index.paths[shard], key)
        # Which flip the latent is (the two differ for these digits, so only one matches) ...
        match = [f for f in (0, 1) if torch.equal(x, torch.from_numpy(latents[f].astype(np.float32))
                                                  * np.float32(loader.scale_factor))]
        assert len(match) == 1, (p, key)
        flips.append(match[0])
        # ... and the image is that flip's stored image.
        assert torch.equal(image, torch.from_numpy(images[match[0]])), (p, key)
    assert set(flips) == {0, 1}  # both flips drawn in this batch: the test tells them apart
    # Asking for images changes no draw: the same latents, labels and positions without them.
    plain = next(iter(GlobalLoader(prepped, 32, rank=1, world_size=2, seed=5)))
    assert plain.images is None
    for a, b in zip(plain[:3], batch[:3]):
        assert torch.equal(a, b)
    # Through DataLoader workers the batch is the same, images included.
    workers = next(iter(GlobalLoader(prepped, 32, rank=1, world_size=2, seed=5, images=True, num_workers=1)))
    for a, b in zip(workers, batch):
        assert torch.equal(a, b)


def test_the_index_records_the_image_member_or_none(prepped, tmp_path):
    rows = np.load(prepped / INDEX_NAME, allow_pickle=False)
    assert rows.dtype.names == (*COLUMNS, "key") and (rows["image_offset"] > 0).all()
    assert (rows["image_size"] == rows["image_size"][0]).all() and rows["image_size"][0] > 2 * 64
    plain = tmp_path / "plain"
    assert prep_main(["--source", "digits", "--vae", "none", "--out", str(plain), "--resolution", "8",
                      "--shard-size", "1000", "--no-progress"]) == 0
    rows = np.load(plain / INDEX_NAME, allow_pickle=False)
    assert (rows["image_offset"] == -1).all() and (rows["image_size"] == 0).all()
    with pytest.raises(ValueError, match="hold no images"):
        GlobalLoader(plain, 8, images=True)


def version1(folder):
    """What the previous dtr-scale wrote: index.npy without the image columns, listed as version 1."""
    rows = np.load(folder / INDEX_NAME, allow_pickle=False)
    old = np.zeros(len(rows), dtype=[*((c, "<i8") for c in COLUMNS[:4]), ("key", rows.dtype["key"])])
    for c in old.dtype.names:
        old[c] = rows[c]
    np.save(folder / INDEX_NAME, old, allow_pickle=False)
    doc = json.loads((folder / "dataset.json").read_text())
    doc["index"]["version"] = 1
    (folder / "dataset.json").write_text(json.dumps(doc))
    return old


def test_an_index_of_the_old_layout_is_rebuilt_or_refused_never_misread(data):
    ref = next(iter(GlobalLoader(data, 12, seed=1, images=True)))
    old = version1(data)
    # prep's version 1 index is passed over: built from the headers (beside the shards) instead.
    loader = GlobalLoader(data, 12, seed=1, images=True)
    assert loader.index.file.startswith(str(data / DATA_INDEX_DIR))
    for a, b in zip(next(iter(loader)), ref):
        assert torch.equal(a, b)
    kept = sorted(p.name for p in (data / DATA_INDEX_DIR).iterdir())
    assert all(f".v{INDEX_VERSION}." in name for name in kept) and len(kept) == 2
    # A kept index of the old version (named without the version) is not ours to read: left alone.
    digest = kept[0].split(".")[0]
    (data / DATA_INDEX_DIR / f"{digest}.json").write_text('{"format": "dtr-scale-sample-index", "version": 1}')
    assert GlobalLoader(data, 12, seed=1).index.file == loader.index.file
    # Old-layout rows listed as this version (a half-copied dataset) are refused, naming the file.
    shutil.rmtree(data / DATA_INDEX_DIR)
    doc = json.loads((data / "dataset.json").read_text())
    doc["index"]["version"] = INDEX_VERSION
    (data / "dataset.json").write_text(json.dumps(doc))
    np.save(data / INDEX_NAME, old, allow_pickle=False)
    with pytest.raises(DataError, match=r"index.npy has the layout of index version 1 .*rerun prep"):
        GlobalLoader(data, 12)
