"""Config loading, overrides and validation messages name the bad key."""
import pytest
import yaml

from dtr_scale.config import ConfigError, load_config, to_yaml, validate


def write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, {"model": {"name": "DiT-B/2", "routing": {"sharing_ratio": 0.8}}, "train": {"lr": 2e-4}})
    cfg = load_config(path, ["model.routing.sharing_ratio=0.6", "parallel.engine=fsdp", "train.max_steps=10"])
    assert cfg.model.name == "DiT-B/2"
    assert cfg.model.routing.sharing_ratio == 0.6
    assert cfg.parallel.engine == "fsdp" and cfg.train.max_steps == 10 and cfg.train.lr == 2e-4
    # round trip through the resolved YAML
    again = load_config(write(tmp_path, yaml.safe_load(to_yaml(cfg))))
    assert again == cfg


def test_int_accepted_for_float():
    assert load_config(None, ["model.routing.sharing_ratio=1"]).model.routing.sharing_ratio == 1.0


def test_exponent_without_dot_is_a_float():
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3


@pytest.mark.parametrize(
    "override,match",
    [
        (["model.routing.sharing_ratio=1.5"], r"model\.routing\.sharing_ratio: got 1\.5; must be in \(0, 1\]"),
        (["model.routing.sharing_ratio=0"], r"model\.routing\.sharing_ratio"),
        (["model.name=DiT-H/2"], r"model\.name: got 'DiT-H/2'; allowed: .*DiT-XL/2"),
        (["model.routing.sharing_ratio=abc"], r"model\.routing\.sharing_ratio: expected float, got str"),
        (["train.max_step=5"], r"unknown config key train\.max_step; allowed keys under train: .*max_steps"),
        (["parallel.engine=horovod"], r"parallel\.engine: got 'horovod'; allowed: single, ddp, fsdp, deepspeed"),
        (["parallel.zero_stage=4"], r"parallel\.zero_stage"),
        (["train.precision=fp8"], r"train\.precision"),
        (["diffusion.loss_weighting=snr"], r"diffusion\.loss_weighting"),
        (["data.verify_sha256=3"], r"data\.verify_sha256: expected true or false"),
        (["modle.name=DiT-B/2"], r"unknown config key modle"),
        (["train.lr"], r"key\.sub=value"),
    ],
)
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, override)


def test_batch_must_divide_world_size():
    cfg = load_config(None, ["train.global_batch_size=6"])
    validate(cfg, world_size=2)
    with pytest.raises(ConfigError, match=r"train\.global_batch_size: got 6, not divisible by world size 4"):
        validate(cfg, world_size=4)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_overrides_may_follow_options():
    from dtr_scale.train import parse_args

    args = parse_args(["--config", "c.yaml", "train.lr=1e-4", "--resume", "auto", "model.checkpointing=0.5"])
    assert (args.config, args.resume) == ("c.yaml", "auto")
    cfg = load_config(None, args.overrides)
    assert cfg.train.lr == 1e-4 and cfg.model.checkpointing == 0.5


def test_cli_applies_an_override_placed_after_resume(capsys):
    """The real entry point: a bad value after `--resume` is read and reported (not 'unrecognized')."""
    from dtr_scale.train import main

    assert main(["--config", "configs/digits-tiny.yaml", "--resume", "none", "model.routing.sharing_ratio=1.5"]) == 2
    assert "model.routing.sharing_ratio: got 1.5; must be in (0, 1]" in capsys.readouterr().err


def test_sampler_options_and_training_overrides_share_one_parser():
    from dtr_scale.sampling.options import parse_options

    with pytest.raises(ConfigError) as train_err:
        load_config(None, ["train.seed=abc"])
    with pytest.raises(ConfigError) as sample_err:
        parse_options(["seed=abc"])
    assert str(train_err.value) == "train.seed: expected int, got str 'abc'"
    assert str(sample_err.value) == "seed: expected int, got str 'abc'"
    with pytest.raises(ConfigError, match=r"^unknown config key sed; allowed keys: num_samples, seed"):
        parse_options(["sed=1"])
    with pytest.raises(ConfigError, match=r"^sampler: got 'euler'; allowed: ddpm \| ddim$"):
        parse_options(["sampler=euler"])
    opts = parse_options(["cfg-scale=4", "cfg_channels=all", "steps=250", "vae=none"])
    assert (opts.cfg_scale, opts.cfg_channels, opts.steps, opts.vae) == (4.0, None, "250", "none")


def test_routing_section_is_the_model_routing_config():
    from dtr_scale.models import RoutingConfig

    routing = load_config(None, ["model.routing.init=random", "model.routing.seed=3"]).model.routing
    assert isinstance(routing, RoutingConfig) and routing == RoutingConfig(0.8, init="random", seed=3)
    with pytest.raises(ConfigError, match=r"model\.routing\.init: got 'window'; allowed: dtr, random"):
        load_config(None, ["model.routing.init=window"])
