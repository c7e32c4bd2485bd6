"""Flow objective through the config, the real single-process engine and the training CLI."""
import json
import os

import numpy as np
import pytest
import torch

from dtr_scale.config import ConfigError, load_config
from dtr_scale.objective import FlowObjective, build_objective, dit_from_config
from dtr_scale.parallel.factory import build_engine
from dtr_scale.parallel.process_group import DistEnv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOW_CFG = os.path.join(REPO, "configs", "digits-tiny-flow.yaml")


@pytest.mark.parametrize("override,key", [
    ("diffusion.flow.path=Cosine", "diffusion.flow.path"),
    ("diffusion.flow.prediction=x0", "diffusion.flow.prediction"),
    ("diffusion.flow.time_sampling=beta", "diffusion.flow.time_sampling"),
    ("diffusion.flow.train_eps=0.7", "diffusion.flow.train_eps"),
    ("diffusion.objective=ddpm", "diffusion.flow"),
    ("diffusion.objective=edm", "diffusion.objective"),
])
def test_bad_flow_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(FLOW_CFG, [override])


def test_flow_defaults_filled_in():
    cfg = load_config(None, ["diffusion.objective=flow"])
    assert cfg.diffusion.flow.path == "Linear" and cfg.diffusion.flow.prediction == "velocity"
    assert load_config(None).diffusion.flow is None


@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal"])
def test_flow_objective_trains_routed_dit_through_the_engine(time_sampling):
    cfg = load_config(FLOW_CFG, ["model.input_size=8", "model.in_channels=2", "model.num_classes=4",
                                 "train.lr=1e-3", f"diffusion.flow.time_sampling={time_sampling}"])
    torch.manual_seed(0)
    dit = dit_from_config(cfg)
    assert dit.time_input == "continuous" and dit.router is not None
    objective = build_objective(cfg, dit)
    assert isinstance(objective, FlowObjective)
    engine = build_engine(objective, cfg, DistEnv(), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(8) % 4
    x = torch.randn(4, 2, 8, 8, generator=gen).clamp(-1, 1)[y]
    fixed = (x, torch.rand(8, generator=gen), y, torch.randn(x.shape, generator=gen))
    with torch.no_grad():
        before = objective(*fixed)[0].item()
    for _ in range(25):
        t = objective.sample_timesteps(8, gen)
        assert t.dtype == torch.float32 and bool(((t >= 0) & (t <= 1)).all())
        with engine.accumulate(sync=True):
            loss, per_sample = engine.module(x, t, y, torch.randn(x.shape, generator=gen))
            engine.backward(loss)
        assert engine.step().applied
    with torch.no_grad():
        after = objective(*fixed)[0].item()
    assert after < 0.9 * before, (before, after)
    # Logging bins follow the DTR task: t = 1 (data) is bin 0, t = 0 (noise) bin 7.
    bins = objective.timestep_clusters(torch.tensor([1.0, 0.9, 0.5, 0.0]), 8).tolist()
    assert bins == [0, 0, 4, 7]


@pytest.mark.slow
def test_flow_training_cli_logs_t_bins(digits_shards, tmp_path):
    from launch_helpers import run_module

    run_module("dtr_scale.train", ["--config", FLOW_CFG, f"data.path={digits_shards}",
                                   f"checkpoint.dir={tmp_path}", "train.max_steps=4", "train.log_every=2",
                                   "train.global_batch_size=16"])
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if line.strip()]
    last = lines[-1]
    assert last["step"] == 4 and any(k.startswith("loss_t") for k in last)
    # The export records the objective and flow settings: the sampler needs no flow flags, and
    # the export and the run directory give the same images.
    from dtr_scale.export import export
    from dtr_scale.sample import main as sample

    pt, _ = export(str(tmp_path), str(tmp_path / "w.pt"))
    meta = torch.load(pt, weights_only=True)["dtr_scale"]
    assert meta["objective"] == "flow" and meta["flow"]["path"] == "Linear"
    assert meta["model"]["time_input"] == "continuous"
    opts = ["num_samples=3", "ode_method=euler", "num_steps=4", "vae=none", "progress=false"]
    outs = [tmp_path / "s_export", tmp_path / "s_run"]
    assert sample(["--weights", pt, "--out", str(outs[0])] + opts) == 0
    assert sample(["--weights", str(tmp_path), "--out", str(outs[1])] + opts) == 0
    images = [np.load(o / "samples.npz")["arr_0"] for o in outs]
    assert images[0].shape[0] == 3
    np.testing.assert_array_equal(images[0], images[1])
