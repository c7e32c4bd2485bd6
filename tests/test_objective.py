"""The objective interface (dtr_scale/objective/) and the randomness module it draws from."""
import pytest
import torch

from dtr_scale.config import load_config
from dtr_scale.diffusion import create_diffusion
from dtr_scale.models import create_model
from dtr_scale.objective import DDPMObjective, FlowSolver, build_objective, dit_from_config, objective_class
from dtr_scale.randomness import (PositionDraws, RankDraws, derive_seed, rank_streams, sample_seed, splitmix64,
                                  training_inputs)


def tiny(cfg_overrides=()):
    cfg = load_config(None, ["model.input_size=8", "model.in_channels=1", "model.num_classes=10", *cfg_overrides])
    torch.manual_seed(0)
    return cfg, build_objective(cfg, dit_from_config(cfg))


def test_splitmix64_is_the_published_mixer():
    # SplitMix64 (Steele, Lea & Flood 2014) from state 0: first output 0xE220A8397B1DCDAF.
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert derive_seed(0) == splitmix64(0)
    assert derive_seed(3, 5) == splitmix64(splitmix64(3) ^ 5)
    # The sampler's per-sample seed is the same derivation of the packed (seed, index) word.
    assert sample_seed(7, 11) == derive_seed((7 << 32) | 11)
    assert len({sample_seed(s, i) for s in range(4) for i in range(64)}) == 256


def test_rank_streams_reseed_per_rank_and_step():
    a_t, a_n = rank_streams(1, 0)
    b_t, _ = rank_streams(1, 1)
    c_t, _ = rank_streams(1, 0, step=5)
    draws = [torch.rand(4, generator=g) for g in (a_t, b_t, c_t)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(torch.rand(4, generator=rank_streams(1, 0)[1]), torch.rand(4, generator=a_n))


def test_training_inputs_pick_the_draws_from_the_batch():
    from dtr_scale.data.global_loader import GlobalBatch

    _, objective = tiny()
    x, y = torch.zeros(4, 1, 8, 8), torch.arange(4)
    streamed = training_inputs(objective, (x, y), *rank_streams(0, 0), 0, torch.device("cpu"))
    gen_t, gen_noise = rank_streams(0, 0)
    assert torch.equal(streamed[2], objective.draw_inputs(x, RankDraws(gen_t, gen_noise))[0])
    assert streamed[4] is None  # the DiT draws label dropout itself
    positioned = training_inputs(objective, GlobalBatch(x, y, torch.arange(10, 14)), *rank_streams(0, 0), 3,
                                 torch.device("cpu"))
    t, noise, drop = objective.draw_inputs(x, PositionDraws(3, torch.arange(10, 14)))
    assert torch.equal(positioned[2], t) and torch.equal(positioned[3], noise) and torch.equal(positioned[4], drop)


def test_ant_uw_refuses_per_sample_draws():
    _, objective = tiny(["diffusion.loss_weighting=ant_uw"])
    with pytest.raises(ValueError, match="per batch, not per sample"):
        objective.draw_inputs(torch.zeros(2, 1, 8, 8), PositionDraws(0, torch.arange(2)))


@pytest.mark.parametrize("weighting", ["constant", "min_snr", "p2", "ant_uw"])
def test_ddpm_objective_weights_its_loss_as_create_diffusion_does(weighting):
    """The objective weighs an unweighted diffusion's MSE itself: the same per-sample losses, bit for
    bit, as ADM-style create_diffusion(loss_weighting=...) gives its users."""
    cfg, objective = tiny([f"diffusion.loss_weighting={weighting}", "diffusion.p2_gamma=0.5"])
    assert objective.diffusion.loss_weighting == "constant"
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 1, 8, 8, generator=g), torch.arange(6)
    t, noise = torch.randint(0, 1000, (6,), generator=g), torch.randn(6, 1, 8, 8, generator=g)
    drop = torch.zeros(6, dtype=torch.bool)
    _, per_sample = objective(x, t, y, noise, drop)
    reference = create_diffusion(loss_weighting=weighting, p2_gamma=0.5)
    expected = reference.training_losses(objective.dit, x, t, model_kwargs={"y": y, "force_drop": drop},
                                         noise=noise)["loss"]
    assert torch.equal(per_sample, expected)


@pytest.mark.parametrize("overrides", [[], ["diffusion.loss_weighting=ant_uw", "diffusion.ant_lr=0.5"],
                                       ["diffusion.objective=flow"]])
def test_param_groups_are_the_engines_groups(overrides):
    """What every engine's AdamW is built from: decay on the DiT's matrices only, 1-D parameters
    undecayed, and the objective's own parameters (ANT-UW) last with their own LR and no decay."""
    cfg, objective = tiny(overrides)
    groups = objective.param_groups(1e-3, 0.01)
    dit_params = [p for p in objective.dit.parameters() if p.requires_grad]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in dit_params if p.dim() >= 2]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in dit_params if p.dim() < 2]
    assert {k: v for k, v in groups[0].items() if k != "params"} == {"lr": 1e-3, "weight_decay": 0.01, "base_lr": 1e-3}
    assert {k: v for k, v in groups[1].items() if k != "params"} == {"lr": 1e-3, "weight_decay": 0.0, "base_lr": 1e-3}
    if objective.weighting is not None:
        assert groups[-1] == {"params": [objective.weighting.log_vars], "lr": 0.5, "weight_decay": 0.0, "base_lr": 0.5}
        assert len(groups) == 3
    else:
        assert len(groups) == 2


def test_each_objective_writes_its_own_records():
    ddpm_cfg, _ = tiny()
    flow_cfg, flow = tiny(["diffusion.objective=flow", "diffusion.flow.path=GVP"])
    ddpm_meta = objective_class("ddpm").export_metadata(ddpm_cfg)
    flow_meta = objective_class("flow").export_metadata(flow_cfg)
    assert ddpm_meta["objective"] == "ddpm" and ddpm_meta["flow"] is None
    assert flow_meta["objective"] == "flow" and flow_meta["flow"]["path"] == "GVP"
    assert "ant_lr" not in objective_class("ddpm").fingerprint(ddpm_cfg)
    assert objective_class("flow").fingerprint(flow_cfg)["flow"]["path"] == "GVP"
    assert flow.dit.time_input == "continuous" and isinstance(objective_class("flow").eval_sampler(flow_cfg), FlowSolver)
    assert isinstance(objective_class("ddpm").from_config(ddpm_cfg, create_model(
        "DiT-T/8", input_size=8, in_channels=1, num_classes=10)), DDPMObjective)


def test_another_objectives_section_is_refused_and_the_chosen_one_filled():
    from dtr_scale.config import ConfigError

    with pytest.raises(ConfigError, match="diffusion.flow: flow settings given but diffusion.objective='ddpm'"):
        load_config(None, ["diffusion.flow.path=GVP"])
    assert load_config(None, ["diffusion.objective=flow"]).diffusion.flow.path == "Linear"
    with pytest.raises(ConfigError, match="diffusion.flow.path: got 'Curved'"):
        load_config(None, ["diffusion.objective=flow", "diffusion.flow.path=Curved"])
