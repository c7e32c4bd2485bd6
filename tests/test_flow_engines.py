"""Flow-matching runs through the real engines: 2-process FSDP2 and ZeRO-2 training end at the
single-process weights (data.mode=global: the same samples and draws on any world size), and a
flow run resumed from a checkpoint ends exactly where the straight run does."""
import os

import pytest
import torch

from launch_helpers import checkpoint_state, metrics, train

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1500)]

FLOW = ["diffusion.objective=flow", "data.mode=global", "train.max_steps=4", "checkpoint.every=2",
        "checkpoint.keep=3"]


def final_state(run_dir, tmp_path, step=4):
    return checkpoint_state(os.path.join(run_dir, f"step_{step:09d}"), tmp_path)


def assert_close_states(a, b, atol):
    assert a.keys() == b.keys() and any(k.endswith("exp_avg_sq") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=key)


def test_flow_engines_match_single_process_and_resume_exactly(digits_shards, tmp_path):
    runs = {name: str(tmp_path / name) for name in ("single", "fsdp", "zero2", "resumed")}
    train(digits_shards, runs["single"], *FLOW, "parallel.engine=single", nproc=1, timeout=900)
    train(digits_shards, runs["fsdp"], *FLOW, "parallel.engine=fsdp", timeout=900)
    train(digits_shards, runs["zero2"], *FLOW, "parallel.engine=deepspeed", "parallel.zero_stage=2", timeout=900)
    single = final_state(runs["single"], tmp_path)
    for engine in ("fsdp", "zero2"):
        assert_close_states(single, final_state(runs[engine], tmp_path), atol=1e-5)
    # the state moved: the comparison is not of initial weights
    start = final_state(runs["single"], tmp_path, step=2)
    assert not torch.equal(start["/ema/final_layer.linear.weight"], single["/ema/final_layer.linear.weight"])

    # exact resume of a flow run: same engine and world size, from step 2
    train(digits_shards, runs["resumed"], *FLOW, "parallel.engine=fsdp",
          f"checkpoint.resume={os.path.join(runs['fsdp'], 'step_000000002')}", timeout=900)
    assert_close_states(final_state(runs["fsdp"], tmp_path), final_state(runs["resumed"], tmp_path), atol=0)
    straight = [m["loss"] for m in metrics(runs["fsdp"]) if "loss" in m][2:]
    resumed = [m["loss"] for m in metrics(runs["resumed"]) if "loss" in m]
    assert resumed == straight
