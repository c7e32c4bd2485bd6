"""One-process training through the real objective and engine: the loss goes down."""
import glob
import os

import pytest
import torch

from dtr_scale.config import load_config
from dtr_scale.models import RoutingConfig, create_model
from dtr_scale.objective import build_objective
from dtr_scale.parallel.factory import build_engine
from dtr_scale.parallel.process_group import DistEnv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_steps(weighting, steps=20, seed=0):
    cfg = load_config(None, ["model.name=DiT-S/8", "train.lr=1e-3", f"diffusion.loss_weighting={weighting}",
                             "train.global_batch_size=8"])
    torch.manual_seed(seed)
    dit = create_model("DiT-S/8", input_size=32, in_channels=4, num_classes=10, routing=RoutingConfig(0.8))
    objective = build_objective(cfg, dit)
    engine = build_engine(objective, cfg, DistEnv(), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, 32, 32, generator=gen) * 0.5 + torch.linspace(-1, 1, 32)  # fixed "data"
    y = torch.arange(8) % 10
    losses = []
    for _ in range(steps):
        t = objective.sample_timesteps(8, gen)
        noise = torch.randn(x.shape, generator=gen)
        with engine.accumulate(sync=True):
            loss, per_sample = engine.module(x, t, y, noise)
            engine.backward(loss)
        result = engine.step()
        assert result.applied and result.grad_norm > 0
        engine.update_ema(0.9)
        losses.append(per_sample.mean().item())
    return losses, objective


@pytest.mark.parametrize("weighting", ["constant", "min_snr", "ant_uw"])
def test_loss_decreases_over_20_steps(weighting):
    losses, objective = train_steps(weighting)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses
    if weighting == "ant_uw":  # the learned log-variances trained too
        assert objective.weighting.log_vars.abs().max() > 1e-3


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)  # every key known, typed and in range
    r = cfg.model.routing
    RoutingConfig(**vars(r))
    assert cfg.train.global_batch_size % 8 == 0 or "digits" in path  # splits over 8-GPU nodes


def test_bf16_autocast_step_runs_on_cpu():
    """The bf16 path (autocast for single/DDP) trains; the GPU default, slow but correct here."""
    cfg = load_config(None, ["train.precision=bf16", "train.global_batch_size=4"])
    torch.manual_seed(0)
    dit = create_model("DiT-T/8", input_size=16, in_channels=4, num_classes=10, routing=RoutingConfig(0.8))
    objective = build_objective(cfg, dit)
    engine = build_engine(objective, cfg, DistEnv(), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 4, 16, 16, generator=gen), torch.arange(4)
    for _ in range(2):
        loss, per_sample = engine.module(x, objective.sample_timesteps(4, gen), y, torch.randn(x.shape, generator=gen))
        assert loss.dtype == torch.float32 and torch.isfinite(loss)  # the loss stays fp32
        engine.backward(loss)
        assert engine.step().applied
    assert all(p.dtype == torch.float32 for p in dit.parameters())  # master weights stay fp32


def test_fp16_on_cpu_is_a_clear_error():
    cfg = load_config(None, ["train.precision=fp16"])
    dit = create_model("DiT-T/8", input_size=16, in_channels=4, num_classes=10)
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        build_engine(build_objective(cfg, dit), cfg, DistEnv(), torch.device("cpu"))
