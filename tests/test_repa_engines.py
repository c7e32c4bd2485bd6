"""REPA through the real CLIs in data.mode=global: 2-process FSDP2 and ZeRO-2 runs equal a
single-process run (global mode makes each step's batch, flips and images independent of the
world size), resume exactly, and the projector is in the checkpoint but not in the sampling
weights of the export."""
import os

import pytest
import torch

from launch_helpers import ENGINES, checkpoint_state, metrics, run_module, train
from repa_helpers import repa_overrides, tiny_encoder_file

pytest.importorskip("timm")
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]
STEPS = ["train.max_steps=4", "checkpoint.every=2", "checkpoint.keep=3", "data.mode=global"]


@pytest.fixture(scope="module")
def repa_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("repa")
    data = str(root / "digits")
    run_module("dtr_scale.prep", ["--source", "digits", "--vae", "none", "--out", data, "--shard-size", "200",
                                  "--no-progress", "--store-images"])
    flags = repa_overrides(tiny_encoder_file(root))
    runs = {"data": data, "flags": flags, "single": str(root / "single")}
    train(data, runs["single"], "parallel.engine=single", *STEPS, *flags, nproc=1)
    for name in ("fsdp", "zero2"):
        runs[name] = str(root / name)
        train(data, runs[name], *ENGINES[name], *STEPS, *flags)
    return runs


def test_fsdp_and_zero2_on_two_processes_equal_one_process_under_repa(repa_runs):
    ref = [m["loss"] for m in metrics(repa_runs["single"])]
    assert len(ref) == 4
    for name in ("fsdp", "zero2"):
        got = [m["loss"] for m in metrics(repa_runs[name])]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), rtol=0, atol=1e-5, msg=name)


def test_exact_resume_with_repa(repa_runs, tmp_path):
    straight = repa_runs["fsdp"]
    resumed = str(tmp_path / "resumed")
    train(repa_runs["data"], resumed, *ENGINES["fsdp"], *STEPS, *repa_runs["flags"],
          f"checkpoint.resume={os.path.join(straight, 'step_000000002')}")
    a = checkpoint_state(os.path.join(straight, "step_000000004"), tmp_path)
    b = checkpoint_state(os.path.join(resumed, "step_000000004"), tmp_path)
    assert any("repa.projector" in k for k in a) and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_projector_is_checkpointed_and_kept_out_of_the_sampling_weights(repa_runs, tmp_path):
    from safetensors import safe_open

    from dtr_scale.models import load_weights

    step = os.path.join(repa_runs["zero2"], "step_000000004")
    state = checkpoint_state(step, tmp_path)
    projector = {k: v for k, v in state.items() if "repa.projector" in k and k.startswith("/model/")}
    assert len(projector) == 6, sorted(state)[:20]
    out = str(tmp_path / "export" / "weights.pt")
    run_module("dtr_scale.export", ["--checkpoint", step, "--out", out])
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert not any("repa" in k or "projector" in k for k in payload["ema"])
    with safe_open(out.replace(".pt", ".safetensors"), "pt") as f:
        assert not any("repa" in k or "projector" in k for k in f.keys())
    kept = payload["training_only"]
    assert sorted(kept) == sorted(k.removeprefix("/model/") for k in projector)
    for k, v in kept.items():
        assert torch.equal(v, state["/model/" + k]), k
    model, meta = load_weights(out)
    assert meta["repa"]["depth"] == 3 and meta["repa"]["encoder"] == "dinov2-from-file"
    assert model.depth == 6  # a plain DiT: sampling needs nothing of REPA
