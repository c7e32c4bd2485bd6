"""`python -m dtr_scale.sample`: outputs, resume, rank/batch independence, errors.

Single-process runs call `main()` in this process (fast); the 2-rank runs use real torchrun.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dtr_scale.sample import main
from launch_helpers import run_module
from test_sample_weights import write_tiny_weights

COMMON = ["num_samples=20", "steps=10", "shard_size=8", "cfg_scale=4.0", "seed=7", "progress=false"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # module scope: set before the module-scoped fixtures run
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_tiny_weights(str(tmp_path_factory.mktemp("w") / "tiny.pt"))


@pytest.fixture(scope="module")
def reference(weights, tmp_path_factory):
    """One uninterrupted single-process run (batch 8) that the other runs must reproduce."""
    out = str(tmp_path_factory.mktemp("ref"))
    assert main(["--weights", weights, "--out", out, "batch_size=8", "png=true"] + COMMON) == 0
    with np.load(os.path.join(out, "samples.npz")) as npz:
        return out, npz["arr_0"], npz["arr_1"]


def _samples(out):
    with np.load(os.path.join(out, "samples.npz")) as npz:
        return npz["arr_0"], npz["arr_1"]


def test_samples_npz_is_adm_layout_in_index_order(weights, reference):
    from dtr_scale.diffusion import create_diffusion
    from dtr_scale.sampling import generate, load_sampling_model

    out, images, labels = reference
    assert images.shape == (20, 16, 16, 1) and images.dtype == np.uint8
    assert labels.shape == (20,) and labels.dtype == np.int64
    model, _ = load_sampling_model(weights)
    last_first, y = generate(model, create_diffusion("10"), [19, 0], seed=7, cfg_scale=4.0)
    np.testing.assert_array_equal(last_first, images[[19, 0]])
    np.testing.assert_array_equal(y, labels[[19, 0]])
    shards = sorted(os.listdir(os.path.join(out, "shards")))
    assert shards == ["shard-000000.npz", "shard-000001.npz", "shard-000002.npz"]
    pngs = sorted(os.listdir(os.path.join(out, "png")))
    assert pngs == [f"{i:06d}.png" for i in range(20)]
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(out, "png", "000013.png"))), images[13, :, :, 0])
    with open(os.path.join(out, "sample_config.json")) as f:
        assert json.load(f)["steps"] == "10"


def test_batch_size_does_not_change_the_samples(weights, reference, tmp_path):
    assert main(["--weights", weights, "--out", str(tmp_path), "batch_size=5"] + COMMON) == 0
    images, labels = _samples(str(tmp_path))
    np.testing.assert_array_equal(images, reference[1])
    np.testing.assert_array_equal(labels, reference[2])


def test_stopped_run_resumes_without_gaps_or_duplicates(weights, reference, tmp_path):
    out = str(tmp_path)
    assert main(["--weights", weights, "--out", out, "batch_size=8", "max_shards_this_run=1"] + COMMON) == 0
    shard_dir = os.path.join(out, "shards")
    assert os.listdir(shard_dir) == ["shard-000000.npz"] and not os.path.exists(os.path.join(out, "samples.npz"))
    first_mtime = os.stat(os.path.join(shard_dir, "shard-000000.npz")).st_mtime_ns
    # A rank killed while writing shard 1 leaves its temp file behind.
    open(os.path.join(shard_dir, ".shard-000001.npz.tmp-99999"), "wb").write(b"partial")
    assert main(["--weights", weights, "--out", out, "batch_size=8"] + COMMON) == 0
    assert sorted(os.listdir(shard_dir)) == ["shard-000000.npz", "shard-000001.npz", "shard-000002.npz"]
    assert os.stat(os.path.join(shard_dir, "shard-000000.npz")).st_mtime_ns == first_mtime  # not redone
    images, labels = _samples(out)
    np.testing.assert_array_equal(images, reference[1])
    np.testing.assert_array_equal(labels, reference[2])


def test_resume_with_different_options_is_refused(weights, tmp_path, capsys):
    out = str(tmp_path)
    assert main(["--weights", weights, "--out", out, "max_shards_this_run=1"] + COMMON) == 0
    assert main(["--weights", weights, "--out", out] + COMMON + ["seed=8"]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "seed: 7 on disk, 8 now" in err


@pytest.mark.parametrize("args,message", [
    (["sed=1"], "unknown config key sed; allowed keys: num_samples"),
    (["sampler=euler"], "sampler: got 'euler'; allowed: ddpm | ddim"),
    (["num_samples=abc"], "num_samples: expected int, got str 'abc'"),
    (["cfg_scale"], "must look like key=value"),
    (["eta=0.5"], "eta: got 0.5; allowed: 0 unless sampler=ddim"),
    (["cfg_channels=3", "cfg_scale=4"], "cfg_channels=3: expected 1..1"),
    (["vae=/no/such/vae"], "VAE directory '/no/such/vae' does not exist"),
])
def test_bad_options_give_clear_errors(weights, tmp_path, capsys, args, message):
    assert main(["--weights", weights, "--out", str(tmp_path), "num_samples=2", "steps=2"] + args) == 2
    assert message in capsys.readouterr().err


def test_bad_weights_path_is_a_clear_error(tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt does not exist" in err and "dtr_scale.export" in err


def test_ddim_and_bf16_through_the_cli(weights, tmp_path):
    assert main(["--weights", weights, "--out", str(tmp_path), "num_samples=4", "sampler=ddim", "steps=ddim5",
                 "eta=0.0", "precision=bf16", "cfg_scale=1.0", "progress=false"]) == 0
    images, _ = _samples(str(tmp_path))
    assert images.shape == (4, 16, 16, 1)


@pytest.mark.distributed
def test_two_ranks_match_one_rank_and_resume(weights, reference, tmp_path):
    out = str(tmp_path / "two")
    # Stop each rank after one shard (rank 0: shard 0, rank 1: shard 1), as if killed.
    run_module("dtr_scale.sample", ["--weights", weights, "--out", out, "batch_size=4",
                                    "max_shards_this_run=1"] + COMMON, nproc=2)
    assert sorted(os.listdir(os.path.join(out, "shards"))) == ["shard-000000.npz", "shard-000001.npz"]
    assert not os.path.exists(os.path.join(out, "samples.npz"))
    proc = run_module("dtr_scale.sample", ["--weights", weights, "--out", out, "batch_size=4"] + COMMON, nproc=2)
    assert "20 images in" in proc.stdout
    images, labels = _samples(out)
    np.testing.assert_array_equal(images, reference[1])
    np.testing.assert_array_equal(labels, reference[2])
