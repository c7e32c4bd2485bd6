"""Shard files and their streamed assembly into ADM's samples.npz layout."""
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

from dtr_scale.sampling import ShardPlan, assemble_samples
from dtr_scale.sampling.shards import remove_stale_temp, shard_path, write_shard


def _fill(out_dir, plan, shape=(8, 8, 3)):
    """Shards whose pixels encode their index, so order mistakes are visible."""
    for j in range(plan.num_shards):
        idx = plan.indices(j)
        images = np.stack([np.full(shape, i % 251, np.uint8) for i in idx])
        images[:, 0, 0, 0] = [i // 251 for i in idx]
        write_shard(shard_path(out_dir, j), images, np.array([i % 7 for i in idx]), idx)


def test_plan_covers_every_index_once_and_deals_shards_round_robin():
    plan = ShardPlan(num_samples=23, shard_size=5)
    assert plan.num_shards == 5
    assert [i for j in range(5) for i in plan.indices(j)] == list(range(23))
    assert plan.shards_of_rank(0, 2) == [0, 2, 4] and plan.shards_of_rank(1, 2) == [1, 3]
    assert plan.shards_of_rank(2, 3) == [2]


def test_assembled_npz_is_every_image_in_index_order(tmp_path):
    plan = ShardPlan(num_samples=23, shard_size=5)
    _fill(str(tmp_path), plan)
    open(tmp_path / ".samples.npz.tmp-4242", "wb").write(b"from a killed assembly")
    path = assemble_samples(str(tmp_path), plan)
    with np.load(path) as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (23, 8, 8, 3) and images.dtype == np.uint8
    assert [int(img[1, 1, 0]) for img in images] == list(range(23))
    assert labels.tolist() == [i % 7 for i in range(23)]
    with zipfile.ZipFile(path) as zf:  # stored members: the evaluator memory-maps arr_0
        assert {i.filename: i.compress_type for i in zf.infolist()} == {
            "arr_0.npy": zipfile.ZIP_STORED, "arr_1.npy": zipfile.ZIP_STORED}
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_assembly_streams_instead_of_holding_all_images(tmp_path):
    plan = ShardPlan(num_samples=4000, shard_size=100)
    _fill(str(tmp_path), plan, shape=(32, 32, 3))  # 12 MB of images, 0.3 MB per shard
    total = plan.num_samples * 32 * 32 * 3
    tracemalloc.start()
    try:
        path = assemble_samples(str(tmp_path), plan)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < total / 4, f"assembly peaked at {peak} bytes for {total} bytes of images"
    images = np.load(path)["arr_0"]
    assert images.shape == (4000, 32, 32, 3)
    assert int(images[3999, 1, 1, 0]) == 3999 % 251 and int(images[3999, 0, 0, 0]) == 3999 // 251


def test_missing_or_foreign_shards_are_clear_errors(tmp_path):
    plan = ShardPlan(num_samples=10, shard_size=5)
    _fill(str(tmp_path), plan)
    os.remove(shard_path(str(tmp_path), 1))
    with pytest.raises(FileNotFoundError, match="1 of 2 sample shards are missing.*rerun"):
        assemble_samples(str(tmp_path), plan)
    _fill(str(tmp_path), plan)
    with pytest.raises(ValueError, match="expected 0..3.*fresh --out"):
        assemble_samples(str(tmp_path), ShardPlan(num_samples=8, shard_size=4))


def test_stale_temp_files_of_a_killed_rank_are_removed(tmp_path):
    final = shard_path(str(tmp_path), 3)
    os.makedirs(os.path.dirname(final))
    stale = os.path.join(os.path.dirname(final), ".shard-000003.npz.tmp-4242")
    other = os.path.join(os.path.dirname(final), ".shard-000004.npz.tmp-4242")
    for p in (stale, other):
        open(p, "wb").write(b"half a shard")
    remove_stale_temp(str(tmp_path), 3)
    assert not os.path.exists(stale) and os.path.exists(other)
