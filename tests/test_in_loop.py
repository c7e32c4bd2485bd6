"""In-loop sample grids and evaluation through the real training CLI."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from launch_helpers import metrics, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
FLAGS = ["train.max_steps=4", "checkpoint.every=100", "train.sample_every=2", "eval.every=4",
         "eval.num_samples=40", "eval.sampling_steps=ddim4", "eval.cfg_scale=1.5"]


def check_run(run_dir):
    grid = os.path.join(run_dir, "samples", "step_000000004.png")
    img = np.asarray(Image.open(grid))
    # 10 classes -> 10 rows of 8 samples (16×16 upscaled ×4 plus padding)
    assert img.shape[0] > img.shape[1] > 8 * 64
    assert os.path.isfile(os.path.join(run_dir, "samples", "step_000000002.png"))
    records = [m for m in metrics(run_dir) if "eval_fd" in m]
    fds = [m["eval_fd"] for m in records]
    assert len(fds) == 1 and math.isfinite(fds[0]) and fds[0] > 0
    assert all("mfu" not in m for m in metrics(run_dir))  # CPU without train.peak_tflops: no MFU
    p = records[0]["eval_protocol"]  # the FID record carries what produced it
    assert (p["num_samples"], p["evaluated_samples"], p["cfg_scale"], p["labels"]) == (40, 40, 1.5, "uniform")
    flow = p["objective"] == "flow"
    assert (p["sampler"], p["steps"], p["nfe"]) == (("ode euler", 4, 4) if flow else ("ddpm", "ddim4", 4))
    assert p["weights"]["step"] == 4 and p["weights"]["ema"] is True and len(p["weights"]["sha256"]) == 64
    assert p["reference"]["name"].startswith("digits")  # the training shards (tmp folder digitsN)
    assert len(p["reference"]["sha256"]) == 64 and p["extractor"] == {"name": "pixels", "weights_sha256": None}
    assert p["seed"] == 0 and p["code"]["train"]["package"]
    return fds[0]


def test_in_loop_single_process(digits_shards, tmp_path):
    run_dir = str(tmp_path / "run")
    train(digits_shards, run_dir, *FLAGS, nproc=1)
    check_run(run_dir)


@pytest.mark.distributed
def test_in_loop_eval_fsdp_matches_ddp(digits_shards, tmp_path):
    one = str(tmp_path / "one")
    two = str(tmp_path / "two")
    train(digits_shards, two, *FLAGS, "parallel.engine=fsdp")
    train(digits_shards, one, *FLAGS, "parallel.engine=ddp")
    # FSDP and DDP train the same model on the same data: same EMA, same samples, same FD.
    assert abs(check_run(two) - check_run(one)) < 1e-6 * check_run(one)


def test_in_loop_flow_run(digits_shards, tmp_path):
    """Flow runs get the same grids and FD (Euler ODE over eval.sampling_steps' count)."""
    run_dir = str(tmp_path / "flow")
    train(digits_shards, run_dir, *FLAGS, "diffusion.objective=flow", nproc=1)
    check_run(run_dir)
