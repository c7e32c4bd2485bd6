"""Flow-matching sampling through `python -m dtr_scale.sample` and `generate`: ODE and SDE,
the guidance interval, official SiT-layout weights, rank independence and bad options."""
import os

import numpy as np
import pytest
import torch

from dtr_scale.flow import create_transport
from dtr_scale.models import create_model, load_pretrained, official_state_dict
from dtr_scale.sample import main
from dtr_scale.sampling import GuidedDenoiser, PixelDecoder, generate, load_sampling_model
from dtr_scale.objective import FlowSolver
from launch_helpers import run_module
from test_sample_weights import TINY, perturbed, write_tiny_flow_weights, write_tiny_weights

ODE = ["ode_method=euler", "num_steps=5"]
SDE = ["flow_sampler=sde", "sde_method=Euler", "num_steps=5", "diffusion_form=sigma"]
COMMON = ["num_samples=10", "shard_size=4", "cfg_scale=4.0", "seed=3", "progress=false"]


@pytest.fixture(scope="module")
def flow_weights(tmp_path_factory):
    return write_tiny_flow_weights(str(tmp_path_factory.mktemp("fw") / "flow.pt"))


def _samples(out):
    with np.load(os.path.join(out, "samples.npz")) as npz:
        return npz["arr_0"], npz["arr_1"]


def _euler(steps=5):
    return FlowSolver(create_transport(), "ode", "euler", steps)


def test_flow_weights_sample_without_flags_and_match_generate(flow_weights, tmp_path):
    model, meta = load_sampling_model(flow_weights)
    assert meta["objective"] == "flow" and model.time_input == "continuous"
    assert main(["--weights", flow_weights, "--out", str(tmp_path / "ode")] + ODE + COMMON) == 0
    ode, labels = _samples(str(tmp_path / "ode"))
    assert ode.shape == (10, 16, 16, 1) and len(set(labels.tolist())) > 1
    # Sample i depends on (seed, i) only: two indices alone in a batch give the same images.
    alone, y = generate(model, _euler(), [9, 0], seed=3, cfg_scale=4.0)
    np.testing.assert_array_equal(alone, ode[[9, 0]])
    np.testing.assert_array_equal(y, labels[[9, 0]])
    assert main(["--weights", flow_weights, "--out", str(tmp_path / "sde")] + SDE + COMMON) == 0
    sde, sde_labels = _samples(str(tmp_path / "sde"))
    np.testing.assert_array_equal(sde_labels, labels)  # same label draws, different sampler
    assert (sde != ode).any()


def test_guidance_interval_changes_output_only_when_narrowed(flow_weights):
    model, _ = load_sampling_model(flow_weights)
    run = lambda **kw: generate(model, _euler(), range(4), seed=5, **kw)[0]  # noqa: E731
    plain, full, unguided = run(cfg_scale=4.0), run(cfg_scale=4.0, guidance_interval=(0.0, 1.0)), run(cfg_scale=1.0)
    np.testing.assert_array_equal(plain, full)
    assert (plain != unguided).any()
    # Euler's model calls are at t = 0, 0.25, 0.5, 0.75: an interval holding none of them is no guidance.
    np.testing.assert_array_equal(run(cfg_scale=4.0, guidance_interval=(0.8, 1.0)), unguided)
    narrowed = run(cfg_scale=4.0, guidance_interval=(0.4, 1.0))
    assert (narrowed != plain).any() and (narrowed != unguided).any()


def test_guidance_interval_is_per_row(flow_weights):
    model, _ = load_sampling_model(flow_weights)
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([1, 2])
    t = torch.tensor([0.2, 0.8])
    mixed = GuidedDenoiser(model, cfg_scale=4.0, guidance_interval=(0.5, 1.0))(x, t, y)
    guided = GuidedDenoiser(model, cfg_scale=4.0)(x, t, y)
    plain = GuidedDenoiser(model, cfg_scale=1.0)(x, t, y)
    torch.testing.assert_close(mixed[0], plain[0])
    torch.testing.assert_close(mixed[1], guided[1])


def test_official_sit_layout_state_dict_samples_through_the_cli(tmp_path, capsys):
    # SiT-XL-2-256.pt is a bare state dict in DiT's layout with learn_sigma=True: a tiny one here.
    torch.manual_seed(0)
    sit = perturbed(create_model("DiT-T/2", **TINY, time_input="continuous"), seed=4)
    assert sit.final_layer.linear.out_features == 2 * 2 * 2  # 2C output channels, C = 1
    path = str(tmp_path / "SiT-T-2.pt")
    torch.save(official_state_dict(sit), path)
    args = ["--weights", path, "--out", str(tmp_path / "o"), "vae=none", "num_samples=4", "cfg_scale=4.0",
            "progress=false"] + ODE
    assert main(args) == 2
    assert "model: got None" in capsys.readouterr().err
    assert main(args + ["objective=flow", "model=SiT-T/2"]) == 0
    images, _ = _samples(str(tmp_path / "o"))
    rebuilt = load_pretrained(create_model("DiT-T/2", **TINY, time_input="continuous"), path).eval()
    expected, _ = generate(rebuilt, _euler(), range(4), seed=0, cfg_scale=4.0, decoder=PixelDecoder())
    np.testing.assert_array_equal(images, expected)


@pytest.mark.parametrize("args, message", [
    (["guidance_low=1.5"], "guidance_low: got 1.5; allowed: a flow time in [0, 1]"),
    (["guidance_low=0.8", "guidance_high=0.2"], "guidance_low: got 0.8; allowed: at most guidance_high"),
    (["ode_method=rk45"], "ode_method: got 'rk45'; allowed: euler"),
    (["flow_sampler=langevin"], "flow_sampler: got 'langevin'; allowed: ode | sde"),
    (["diffusion_form=cubic"], "diffusion_form: got 'cubic'"),
    (["num_steps=1"], "num_steps: got 1"),
    (["objective=ddpm"], "objective: got 'ddpm'; the weights were trained with objective=flow"),
    (["steps=10"], "steps: got '10'; allowed: unset with objective=flow"),
])
def test_bad_flow_options_name_the_key(flow_weights, tmp_path, capsys, args, message):
    assert main(["--weights", flow_weights, "--out", str(tmp_path), "num_samples=2"] + args) == 2
    assert message in capsys.readouterr().err


def test_flow_options_with_ddpm_weights_are_refused(tmp_path, capsys):
    ddpm = write_tiny_weights(str(tmp_path / "ddpm.pt"))
    assert main(["--weights", ddpm, "--out", str(tmp_path / "o"), "num_samples=2", "flow_sampler=sde"]) == 2
    assert "flow_sampler: got 'sde'; allowed: unset unless objective=flow" in capsys.readouterr().err


@pytest.mark.distributed
def test_flow_sde_two_ranks_match_one_rank(flow_weights, tmp_path):
    # Same batch size: a shard's batches are then the same on any number of ranks (other batch
    # sizes may move the last bits of the CPU GEMMs, which the SDE's noise can turn into a pixel).
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(["--weights", flow_weights, "--out", one, "batch_size=4", "guidance_low=0.3"] + SDE + COMMON) == 0
    run_module("dtr_scale.sample", ["--weights", flow_weights, "--out", two, "batch_size=4",
                                    "guidance_low=0.3"] + SDE + COMMON, nproc=2)
    for a, b in zip(_samples(one), _samples(two)):
        np.testing.assert_array_equal(a, b)


def test_flow_run_resumes_and_refuses_other_flow_options(flow_weights, tmp_path, capsys):
    out = str(tmp_path / "o")
    base = ["--weights", flow_weights, "--out", out] + ODE + COMMON
    assert main(base + ["max_shards_this_run=1"]) == 0
    assert main(base + ["guidance_low=0.5"]) == 2
    assert "guidance_low: 0.0 on disk, 0.5 now" in capsys.readouterr().err
    assert main(base) == 0
    assert _samples(out)[0].shape[0] == 10
