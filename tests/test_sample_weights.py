"""Test weights for the sampler tests, and how `--weights` is resolved (file, run dir, errors).

`write_tiny_weights` is imported by the other test_sample_* files: a DiT-T/2 on 16×16 one-channel
pixels (the digits setting) whose zero-initialised layers (adaLN-Zero, final layer) are given
seeded random values, so that the model output depends on x, t and y and guidance does something.
"""
import os

import numpy as np
import pytest
import torch

from dtr_scale.errors import UserError
from dtr_scale.export import write_weights
from dtr_scale.models import RoutingConfig, create_model
from dtr_scale.models.pretrained import EXPORT_FORMAT
from dtr_scale.sampling import load_sampling_model

TINY = dict(input_size=16, in_channels=1, num_classes=10)


def perturbed(model, seed=1):
    """Give the zero-initialised layers values, so that the output depends on x, t and y."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def write_tiny_weights(path: str, seed: int = 1) -> str:
    torch.manual_seed(0)
    model = perturbed(create_model("DiT-T/2", **TINY, routing=RoutingConfig(0.8)), seed)
    meta = {"format": EXPORT_FORMAT,
            "model": {"name": "DiT-T/2", **TINY, "learn_sigma": True, "class_dropout_prob": 0.1},
            "routing": model.routing.to_dict(), "step": 0,
            "diffusion": {"schedule": "linear", "steps": 1000},
            "data": {"vae": {"name": "none"}, "scale_factor": 1.0, "shift_factor": 0.0,
                     "latent_shape": [1, 16, 16], "num_classes": 10}}
    pt, _ = write_weights(model, meta, path)
    return pt


def write_tiny_flow_weights(path: str, step: int = 0) -> str:
    """A perturbed tiny flow-matching (SiT-style, continuous time) export."""
    torch.manual_seed(0)
    model = perturbed(create_model("DiT-T/2", **TINY, routing=RoutingConfig(0.8), time_input="continuous"))
    meta = {"model": {"name": "DiT-T/2", **TINY, "learn_sigma": True, "class_dropout_prob": 0.1,
                      "time_input": "continuous"},
            "routing": model.routing.to_dict(), "step": step, "objective": "flow",
            "flow": {"path": "Linear", "prediction": "velocity", "train_eps": None, "sample_eps": None},
            "data": {"vae": {"name": "none"}, "scale_factor": 1.0, "shift_factor": 0.0}}
    pt, _ = write_weights(model, meta, path)
    return pt


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_tiny_weights(str(tmp_path_factory.mktemp("weights") / "tiny.pt"))


def test_export_file_rebuilds_the_model_with_metadata(weights):
    model, meta = load_sampling_model(weights)
    assert (model.in_channels, model.input_size, model.num_classes) == (1, 16, 10)
    assert not model.training and model.router is not None
    assert meta["data"]["vae"] == {"name": "none"}
    same, _ = load_sampling_model(weights.replace(".pt", ".safetensors"))
    for (name, a), (_, b) in zip(model.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), name


def test_missing_weights_path_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*dtr_scale.export"):
        load_sampling_model(str(tmp_path / "nope.pt"))


def test_directory_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="latest"):
        load_sampling_model(str(tmp_path))


def test_official_checkpoint_without_metadata_is_a_clear_error(tmp_path):
    model = create_model("DiT-T/2", **TINY)
    path = str(tmp_path / "official.pt")
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="no dtr-scale metadata"):
        load_sampling_model(path)


@pytest.mark.slow
def test_training_run_directory_samples_like_its_export(digits_shards, tmp_path):
    """--weights RUN_DIR reads the EMA from the engine files exactly as the exported file has it."""
    from launch_helpers import run_module, train

    run = str(tmp_path / "run")
    train(digits_shards, run, "train.max_steps=2", "checkpoint.every=2", nproc=1)
    run_module("dtr_scale.export", ["--checkpoint", run, "--out", str(tmp_path / "w.pt")])
    a_model, a_meta = load_sampling_model(run)
    b_model, b_meta = load_sampling_model(str(tmp_path / "w.pt"))
    assert a_meta["step"] == b_meta["step"] == 2
    assert a_meta["data"]["vae"] == {"name": "none"}
    for (name, a), (_, b) in zip(a_model.state_dict().items(), b_model.state_dict().items()):
        assert torch.equal(a, b), name
    common = ["num_samples=4", "steps=3", "shard_size=4", "progress=false"]
    run_module("dtr_scale.sample", ["--weights", run, "--out", str(tmp_path / "s1")] + common)
    run_module("dtr_scale.sample", ["--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "s2")] + common)
    first = np.load(os.path.join(tmp_path, "s1", "samples.npz"))["arr_0"]
    assert np.array_equal(first, np.load(os.path.join(tmp_path, "s2", "samples.npz"))["arr_0"])
    assert first.shape == (4, 16, 16, 1)
