"""The sample index of data.mode=global: written by prep, read without opening unneeded shards;
built once and kept for datasets written before it; refused when changed. Real prep, real tars.

Files opened are counted with a Python audit hook ("open" events cover builtins.open, io.open,
os.open and numpy's memmap, including tarfile's own reference to open)."""
import itertools
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from dtr_scale.data import DataError, GlobalLoader, read_manifest
from dtr_scale.data.index_cache import DATA_INDEX_DIR
from dtr_scale.data.sample_index import INDEX_NAME, join_rows, scan_shard_rows
from dtr_scale.prep import main as prep_main

_OPENED: list[str] | None = None


def _audit(event, args):
    if event in ("open", "os.open") and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # cannot be removed; it records only while a test sets _OPENED


def opened_during(fn):
    global _OPENED
    _OPENED = []
    try:
        out = fn()
    finally:
        got, _OPENED = _OPENED, None
    return out, got


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    """digits at 8x8 pixels in 9 shards of 200 (the last 197), written by the real prep."""
    out = tmp_path_factory.mktemp("prep") / "digits"
    assert prep_main(["--source", "digits", "--vae", "none", "--out", str(out), "--resolution", "8",
                      "--shard-size", "200", "--no-progress"]) == 0
    return out


@pytest.fixture
def data(prepped, tmp_path):
    return shutil.copytree(prepped, tmp_path / "data")


def make_old(folder):
    """Turn a prep output into what prep wrote before the index: no index.npy, no index keys."""
    path = folder / "dataset.json"
    doc = json.loads(path.read_text())
    del doc["index"]
    for s in doc["shards"]:
        del s["index_sha256"]
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (folder / INDEX_NAME).unlink()
    return folder


def kept(folder):
    """The kept index's (.json, rows .npy) files in `folder`."""
    return sorted(folder.iterdir(), key=lambda p: p.suffix)


def shards_opened(paths, folder):
    return sorted({os.path.basename(p) for p in paths if p.startswith(str(folder)) and p.endswith(".tar")})


def first_batch(folder, rank=0, world_size=4, batch=8, seed=3):
    loader = GlobalLoader(folder, batch, rank=rank, world_size=world_size, seed=seed)
    return loader, next(iter(loader))


def test_prep_writes_the_index_and_global_mode_opens_only_the_shards_it_reads(data):
    m = read_manifest(data)
    assert m.index["name"] == INDEX_NAME and all(s.index_sha256 for s in m.shards)
    rows = np.load(data / INDEX_NAME, allow_pickle=False)
    scanned = join_rows(scan_shard_rows(m))  # what the header scan finds: the same rows
    assert rows.dtype == scanned.dtype and (rows == scanned).all() and len(rows) == 1797
    for rank in range(4):
        (loader, batch), opened = opened_during(lambda r=rank: first_batch(data, r))
        want = sorted({os.path.basename(loader.index.paths[loader.index.shard_of(int(s))])
                       for s in loader.dataset.order.samples(batch.positions.numpy())})
        assert 1 <= len(want) <= 2 and shards_opened(opened, data) == want, (rank, want, opened)
        assert sum(p.endswith(INDEX_NAME) for p in opened) == 3  # np.load, its header, its memmap
        assert not (data / DATA_INDEX_DIR).exists()
    # The header scan (today's start for a dataset without the index) opens every shard.
    old = make_old(data)
    _, opened = opened_during(lambda: first_batch(old))
    assert len(shards_opened(opened, data)) == len(m.shards)


def batches(folder, n, world_size=1, **kw):
    loader = GlobalLoader(folder, 12, world_size=world_size, seed=5, **kw)
    return list(itertools.islice(loader, n))


def test_old_dataset_indexes_once_and_reuses_it_with_the_same_batches(data, tmp_path, monkeypatch):
    ref = batches(data, 6)  # prep's index
    old = make_old(data)
    (loader, _), opened = opened_during(lambda: first_batch(old))
    files = kept(old / DATA_INDEX_DIR)
    assert [p.suffix for p in files] == [".json", ".npy"] and loader.index.file == str(files[1])
    assert len(shards_opened(opened, old)) == 9
    (loader, _), opened = opened_during(lambda: first_batch(old))  # a later start: no scan
    assert len(shards_opened(opened, old)) <= 2 and loader.index.file == str(files[1])
    assert kept(old / DATA_INDEX_DIR) == files
    for a, b in zip(ref, batches(old, 6)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.positions, b.positions)
    # Data folder not writable for us (here: `_index` is someone's file): the cache folder is
    # used, and the file is left as it was.
    shutil.rmtree(old / DATA_INDEX_DIR)
    (old / DATA_INDEX_DIR).write_bytes(b"not ours")
    monkeypatch.setenv("DTR_SCALE_INDEX_CACHE", str(tmp_path / "cache"))
    loader, _ = first_batch(old)
    assert (old / DATA_INDEX_DIR).read_bytes() == b"not ours"
    assert loader.index.file.startswith(str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").iterdir())) == 2
    _, opened = opened_during(lambda: first_batch(old))
    assert len(shards_opened(opened, old)) <= 2
    # A changed dataset.json is another dataset: indexed anew, the old index is not used for it.
    doc = json.loads((old / "dataset.json").read_text())
    (old / "dataset.json").write_text(json.dumps(dict(doc, source="digits, relabelled"), indent=2))
    first_batch(old)
    assert len(list((tmp_path / "cache").iterdir())) == 4


def all_samples(folder):
    """One batch of every sample: reads a row of every shard."""
    return next(iter(GlobalLoader(folder, 1797, seed=0)))


def test_a_changed_prep_index_is_refused(data):
    all_samples(data)
    rows = np.load(data / INDEX_NAME, allow_pickle=False)
    # Swap two samples of shard 3: every read would still pass the sample checks, silently wrong.
    rows[[600, 601]] = rows[[601, 600]]
    np.save(data / INDEX_NAME, rows, allow_pickle=False)
    with pytest.raises(DataError, match=r"index.npy: the rows of shard .*shard-000003.tar do not match"):
        all_samples(data)
    # A shard rewritten (its new size and hash in dataset.json) makes the index stale: it is not
    # used, and the index is built from the headers instead (here: beside the shards).
    doc = json.loads((data / "dataset.json").read_text())
    kept_sha256, doc["shards"][8]["sha256"] = doc["shards"][8]["sha256"], "f" * 64
    (data / "dataset.json").write_text(json.dumps(doc))
    assert GlobalLoader(data, 12).index.file.startswith(str(data / DATA_INDEX_DIR))
    shutil.rmtree(data / DATA_INDEX_DIR)
    doc["shards"][8]["sha256"] = kept_sha256
    (data / "dataset.json").write_text(json.dumps(doc))
    np.save(data / INDEX_NAME, rows[:-1], allow_pickle=False)
    with pytest.raises(DataError, match="index.npy holds"):
        GlobalLoader(data, 12)
    (data / INDEX_NAME).unlink()
    with pytest.raises(DataError, match="index.npy is missing"):
        GlobalLoader(data, 12)


def test_a_changed_kept_index_is_refused_not_overwritten(data):
    old = make_old(data)
    first_batch(old)
    meta_path, rows_path = kept(old / DATA_INDEX_DIR)
    rows = np.load(rows_path, allow_pickle=False)
    rows[5]["data_offset"] += 512  # another member's bytes
    np.save(rows_path, rows, allow_pickle=False)
    with pytest.raises(DataError, match=f"{rows_path.name}: the rows of shard .*shard-000000.tar"):
        all_samples(old)
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, manifest_sha256="0" * 64)))
    before = meta_path.read_bytes()
    with pytest.raises(DataError, match=f"{meta_path.name} does not belong to .*delete"):
        GlobalLoader(old, 12)
    assert meta_path.read_bytes() == before and kept(old / DATA_INDEX_DIR) == [meta_path, rows_path]
