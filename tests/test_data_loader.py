"""LatentLoader on real WebDataset shards: coverage, determinism, noise, resume in a new
process, bad data. Synthetic shards carry their sample id as their value (see
dtr_scale.data.synthetic), so every batch says exactly which samples it holds."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dtr_scale.data import DataError, LatentLoader, check_data_path, read_manifest
from dtr_scale.data.synthetic import write_synthetic_shards

COUNTS = [23, 17, 30, 9, 21]  # uneven on purpose: 100 samples


def ids_of(x):
    flat = x.reshape(x.shape[0], -1)
    assert torch.equal(flat, flat[:, :1].expand_as(flat))  # one id per sample
    return flat[:, 0].round().long().tolist()


@pytest.fixture
def shards(tmp_path):
    return write_synthetic_shards(tmp_path / "s", counts=COUNTS, latent_shape=(2, 4, 4))


@pytest.mark.parametrize("workers", [0, 2])
def test_epoch_covers_every_sample_once(shards, workers):
    loader = LatentLoader(shards, 8, num_workers=workers, seed=3, shuffle_buffer=50)
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.long and x.shape[1:] == (2, 4, 4)
        ids = ids_of(x)
        assert y.tolist() == [i % 10 for i in ids]
        seen += ids
    assert sorted(seen) == list(range(100)) and seen != list(range(100))
    assert loader.epoch == 1 and loader.data_errors == 0
    second = [i for x, _ in loader for i in ids_of(x)]
    assert sorted(second) == list(range(100)) and second != seen  # a new epoch, a new order


def test_deterministic_for_a_seed(shards):
    run = lambda seed: [ids_of(x) for x, _ in LatentLoader(shards, 8, num_workers=2, seed=seed)]
    assert run(5) == run(5)
    assert run(5) != run(6)


def test_ranks_partition_the_epoch(shards):
    per_rank = [[i for x, _ in LatentLoader(shards, 8, rank=r, world_size=2, num_workers=2, seed=1)
                 for i in ids_of(x)] for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(100))


def test_moments_draw_and_flip(tmp_path):
    import webdataset as wds
    from dtr_scale.file_hash import file_sha256
    from dtr_scale.data.shard_format import encode_sample

    # Sample i: mean (flip 0) = i, mean (flip 1) = -i, std 0.5 everywhere, scale 0.25.
    out = write_synthetic_shards(tmp_path / "m", counts=[64], latent_shape=(4, 8, 8),
                                 field="moments.npy", std=0.5, scale_factor=0.25)
    with wds.TarWriter(str(out / "shard-000000.tar"), encoder=False, mtime=0) as w:
        for i in range(64):
            arr = np.empty((2, 2, 4, 8, 8), np.float16)
            arr[0, 0], arr[1, 0], arr[:, 1] = i, -i, 0.5
            w.write(encode_sample(f"000000_{i:06d}", "moments.npy", arr, i % 10))
    man = json.loads((out / "dataset.json").read_text())
    man["shards"][0].update(bytes=(out / "shard-000000.tar").stat().st_size,
                            sha256=file_sha256(out / "shard-000000.tar"))
    (out / "dataset.json").write_text(json.dumps(man))
    loader = LatentLoader(out, 64, seed=0, shuffle_buffer=0)
    (x, y), = list(loader)
    assert loader.scale_factor == 0.25 and loader.latent_shape == (4, 8, 8)
    ids = torch.arange(64)
    per_sample_mean = x.reshape(64, -1).mean(1) / 0.25
    flips = (per_sample_mean.sign() < 0) & (ids > 0)
    assert torch.allclose(per_sample_mean.abs(), ids.float(), atol=0.25)
    assert 10 < int(flips.sum()) < 54                          # both flips get drawn
    noise = x / 0.25 - torch.where(flips, -ids, ids).float()[:, None, None, None]
    assert abs(noise.std().item() - 0.5) < 0.03 and abs(noise.mean().item()) < 0.03
    # random_flip=False (digits, text): always the stored image, same noise stream otherwise
    (x0, _), = list(LatentLoader(out, 64, seed=0, shuffle_buffer=0, random_flip=False))
    assert torch.allclose((x0.reshape(64, -1).mean(1) / 0.25), ids.float(), atol=0.25)
    torch.testing.assert_close(x0 / 0.25 - ids.float()[:, None, None, None], noise)


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from dtr_scale.data import LatentLoader
    path, mode, state_file, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    loader = LatentLoader(path, 8, num_workers=2, seed=11, mode=mode, shuffle_buffer=40)
    loader.load_state_dict(json.load(open(state_file)))
    it = iter(loader)
    batches = [next(it) for _ in range(n)]
    print(json.dumps([[x.tolist(), y.tolist()] for x, y in batches]))
""")


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
def test_resume_in_a_new_process_gives_the_same_batches(shards, tmp_path, mode):
    make = lambda: LatentLoader(shards, 8, num_workers=2, seed=11, mode=mode, shuffle_buffer=40)
    it = iter(make())
    reference = [next(it) for _ in range(9)]
    del it
    interrupted = make()
    it = iter(interrupted)
    for _ in range(5):
        next(it)
    state = interrupted.state_dict()
    del it
    (tmp_path / "state.json").write_text(json.dumps(state))
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(shards), mode,
                           str(tmp_path / "state.json"), "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads(proc.stdout)
    for (x, y), (rx, ry) in zip(reference[5:], resumed):
        assert torch.equal(x, torch.tensor(rx)) and y.tolist() == ry


def test_resume_rejects_a_different_world(shards):
    state = LatentLoader(shards, 8, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        LatentLoader(shards, 8, world_size=1).load_state_dict(state)


def test_truncated_shard_is_left_out_at_start_named_once_and_counted(shards, caplog):
    path = shards / "shard-000002.tar"
    path.write_bytes(path.read_bytes()[:5000])
    with caplog.at_level("WARNING", logger="dtr_scale.data"):
        loader = LatentLoader(shards, 8, num_workers=2, seed=0, mode="resampled")
        assert loader.data_errors == 1  # counted before the first batch
        stream = iter(loader)
        seen = {i for _ in range(20) for i in ids_of(next(stream)[0])}
    assert not seen & set(range(23 + 17, 23 + 17 + 30))  # never drawn
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "shard-000002.tar" in warnings[0].getMessage()
    assert loader.data_errors == 1
    # Another rank leaves the shard out too, but only rank 0 counts it (ranks' counts are summed).
    assert LatentLoader(shards, 8, rank=1, world_size=2).data_errors == 0
    with pytest.raises(DataError, match=r"shard-000002.tar is 5000 bytes, dataset.json says \d+"):
        LatentLoader(shards, 8, num_workers=2, on_error="raise")  # at construction: no batch read


def test_sha256_mismatch_detected(shards):
    path = shards / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[1536 + 200] ^= 0xFF   # sample 0: cls hdr+data, npy hdr, then its payload; same size
    path.write_bytes(bytes(data))
    assert LatentLoader(shards, 8).data_errors == 0  # the size alone does not see it
    loader = LatentLoader(shards, 8, verify_sha256=True)
    seen = [i for x, _ in loader for i in ids_of(x)]
    assert len(seen) == 100 - 17 and loader.data_errors == 1
    with pytest.raises(DataError, match="shard-000001.tar.*sha256"):
        LatentLoader(shards, 8, verify_sha256=True, on_error="raise")


def test_bad_samples_skipped_and_named(tmp_path):
    import webdataset as wds
    from dtr_scale.file_hash import file_sha256
    from dtr_scale.data.shard_format import encode_sample

    out = write_synthetic_shards(tmp_path / "b", counts=[6], latent_shape=(2, 4, 4))
    with wds.TarWriter(str(out / "shard-000000.tar"), encoder=False, mtime=0) as w:
        for i in range(6):
            s = encode_sample(f"000000_{i:06d}", "latent.npy",
                              np.full((2, 2, 4, 4) if i != 3 else (2, 2, 4, 5), i, np.float16), i)
            if i == 1:
                del s["latent.npy"]
            w.write(s)
    man = json.loads((out / "dataset.json").read_text())
    man["shards"][0].update(bytes=(out / "shard-000000.tar").stat().st_size,
                            sha256=file_sha256(out / "shard-000000.tar"))
    (out / "dataset.json").write_text(json.dumps(man))
    loader = LatentLoader(out, 2)
    assert sorted(i for x, _ in loader for i in ids_of(x)) == [0, 2, 4, 5]
    assert loader.data_errors == 2
    with pytest.raises(DataError, match="000000_000001.*shard-000000.tar.*no 'latent.npy'"):
        list(LatentLoader(out, 2, on_error="raise", shuffle_buffer=0))


def test_bad_data_paths_fail_clearly(tmp_path, shards):
    with pytest.raises(ValueError, match="data.path is empty"):
        check_data_path("")
    with pytest.raises(FileNotFoundError, match="does not exist.*dtr_scale.prep"):
        check_data_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty directory"):
        check_data_path(tmp_path / "empty")
    (shards / "dataset.json").rename(tmp_path / "moved.json")
    with pytest.raises(FileNotFoundError, match="no dataset.json.*rerun the same prep"):
        LatentLoader(shards, 4)
    (tmp_path / "moved.json").rename(shards / "dataset.json")
    assert read_manifest(shards).num_samples == 100
    (shards / "shard-000004.tar").unlink()
    with pytest.raises(FileNotFoundError, match="shard-000004.tar"):
        check_data_path(shards)
