"""Typed experiment configuration: YAML files, dotted command-line overrides, validation.

    cfg = load_config("configs/digits-tiny.yaml", ["model.routing.sharing_ratio=0.6"])

Every key has a type and a default here; a YAML file or an override that names an unknown key,
gives a value of the wrong type or one out of range is an error that names the key, the value
given and what is allowed. `to_yaml(cfg)` is what training prints at start and saves beside the
checkpoints, so a run can always be reproduced from its own directory.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from .models.attention import ATTENTION_BACKENDS
from .models.dit import DIT_MODELS
from .models.routing import RoutingConfig


class ConfigError(ValueError):
    """A bad configuration value; the message names the dotted key."""


@dataclass
class ModelSection:
    name: str = "DiT-T/2"
    input_size: Optional[int] = None  # latent side; None = from the dataset manifest
    in_channels: Optional[int] = None  # None = from the dataset manifest
    num_classes: Optional[int] = None  # None = from the dataset manifest
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    routing: RoutingConfig = field(default_factory=RoutingConfig)  # β, init, α, tasks, seed (checks its own ranges)
    attention: str = "auto"  # auto | xformers | sdpa | math
    checkpointing: float = 0.0  # fraction of blocks with activation checkpointing
    compile: str = "auto"  # torch.compile each DiT block: true | false | auto (= on CUDA only)


@dataclass
class FlowSection:
    """Flow matching (SiT's transport); only with diffusion.objective=flow."""
    path: str = "Linear"  # Linear | GVP | VP
    prediction: str = "velocity"  # velocity | noise | score
    loss_weight: Optional[str] = None  # None | velocity | likelihood (noise/score models only)
    train_eps: Optional[float] = None  # None = SiT's choice per path and prediction
    sample_eps: Optional[float] = None
    time_sampling: str = "uniform"  # uniform (SiT) | logit_normal (SD3): t = sigmoid(N(mean, std²))
    logit_mean: float = 0.0
    logit_std: float = 1.0


@dataclass
class DiffusionSection:
    objective: str = "ddpm"  # ddpm (DiT/ADM) | flow (SiT)
    flow: Optional[FlowSection] = None  # settings of objective=flow (defaults filled in)
    schedule: str = "linear"  # linear (DiT) | cosine (ANT)
    steps: int = 1000
    loss_weighting: str = "constant"  # constant | min_snr | p2 | ant_uw
    snr_gamma: float = 5.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0
    ant_clusters: int = 8
    ant_lr: float = 0.025


@dataclass
class DataSection:
    path: str = ""
    num_workers: int = 2
    shuffle_buffer: int = 1000
    mode: str = "resampled"  # epoch | resampled | global (world-size-invariant order)
    on_error: str = "skip"  # skip | raise
    verify_sha256: bool = False
    random_flip: bool = True  # use the stored horizontal flip half the time (off for digits/text)


@dataclass
class TrainSection:
    global_batch_size: int = 256
    grad_accum: int = 1
    max_steps: int = 400000
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max global grad norm; 0 = no clipping (DiT default)
    ema_decay: float = 0.9999
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    log_every: int = 50
    max_consecutive_nonfinite: int = 10
    preempt_check_every: int = 10  # steps between the (collective) checks of the preemption flag
    sample_every: int = 0  # in-loop sample grids (PNG); 0 = off


@dataclass
class ParallelSection:
    engine: str = "single"  # single | ddp | fsdp | deepspeed
    zero_stage: int = 2
    offload: bool = False  # DeepSpeed: optimizer state (and ZeRO-3 params) on the CPU
    deepspeed_config: Optional[str] = None  # JSON whose keys override the generated config
    meta_init: bool = False  # fsdp / ZeRO-3: build the model sharded, never whole on a rank


@dataclass
class CheckpointSection:
    dir: str = "runs/default"
    every: int = 5000
    keep: int = 3
    resume: str = "auto"  # auto | none | PATH


@dataclass
class EvalSection:
    every: int = 0  # 0 = no in-loop evaluation
    num_samples: int = 1000
    sampling_steps: str = "250"
    cfg_scale: float = 1.5
    extractor: str = "pixels"  # pixels | inception
    inception_weights: Optional[str] = None
    ref: Optional[str] = None  # reference npz / folder; None = the training shards


@dataclass
class LogSection:
    """Optional experiment tracking beside TensorBoard and metrics.jsonl (dtr_scale/wandb_log.py)."""
    wandb: bool = False  # needs `pip install dtr-scale[wandb]`
    wandb_project: str = "dtr-scale"
    wandb_run_name: Optional[str] = None  # None = the run folder's name
    wandb_mode: str = "auto"  # auto (= $WANDB_MODE, else online) | online | offline | disabled


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)


CHOICES = {
    "model.name": DIT_MODELS,
    "model.attention": ATTENTION_BACKENDS,
    "diffusion.schedule": ("linear", "cosine"),
    "diffusion.loss_weighting": ("constant", "min_snr", "p2", "ant_uw"),
    "diffusion.objective": ("ddpm", "flow"),
    "data.mode": ("epoch", "resampled", "global"),
    "data.on_error": ("skip", "raise"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "parallel.engine": ("single", "ddp", "fsdp", "deepspeed"),
    "model.compile": ("auto", "true", "false"),
    "parallel.zero_stage": (1, 2, 3),
    "eval.extractor": ("pixels", "inception"),
    "log.wandb_mode": ("auto", "online", "offline", "disabled"),
}

# key -> (predicate, description of the allowed range)
RANGES = {
    "model.checkpointing": (lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]"),
    "model.class_dropout_prob": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "diffusion.steps": (lambda v: v >= 2, ">= 2"),
    "diffusion.ant_clusters": (lambda v: v >= 1, ">= 1"),
    "train.global_batch_size": (lambda v: v >= 1, ">= 1"),
    "train.grad_accum": (lambda v: v >= 1, ">= 1"),
    "train.max_steps": (lambda v: v >= 0, ">= 0"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.ema_decay": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "train.grad_clip": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "train.log_every": (lambda v: v >= 1, ">= 1"),
    "train.preempt_check_every": (lambda v: v >= 1, ">= 1"),
    "checkpoint.every": (lambda v: v >= 1, ">= 1"),
    "checkpoint.keep": (lambda v: v >= 1, ">= 1"),
    "data.num_workers": (lambda v: v >= 0, ">= 0"),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of sub-keys, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it is
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got boolean {value!r}")
    if tp is str and isinstance(value, bool):
        return "true" if value else "false"  # e.g. model.compile: true (a YAML boolean)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. eval.sampling_steps: 250
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" under {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s}; allowed keys{where}: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        # A field may name words that mean "its default of None" (e.g. the sampler's cfg_channels=all).
        if isinstance(value, str) and value.lower() in fields[name].metadata.get("none_words", ()):
            value = None
        kwargs[name] = _coerce(prefix + name, value, hints[name])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a section that checks itself on construction (RoutingConfig)
        raise ConfigError(str(exc)) from None


def from_key_values(cls: type, pairs: list[str] | tuple[str, ...], form: str = "key=value") -> Any:
    """Build the dataclass `cls` from `["key=value", ...]` with the same typing and messages as the
    training config (used by CLIs whose options are a flat dataclass, e.g. the sampler's)."""
    return _build(cls, apply_overrides({}, list(pairs), form))


def config_from_dict(data: dict | None) -> Config:
    cfg = _build(Config, data or {})
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_override(text: str, form: str = "key.sub=value") -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', value parsed as YAML, so 0.6 is a float and true a bool)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like {form}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: list[str], form: str = "key.sub=value") -> dict:
    for text in overrides:
        key, value = parse_override(text, form)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    data: dict = {}
    if path:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(apply_overrides(data, list(overrides)))


def bad_value(key: str, value: Any, allowed: str) -> ConfigError:
    """The one message format for a value out of range: `key: got VALUE; ALLOWED`."""
    return ConfigError(f"{key}: got {value!r}; {allowed}")


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate_flow(cfg: Config) -> None:
    """objective=flow fills in the flow defaults; flow settings without it are a mistake."""
    from .flow import PATHS, PREDICTIONS

    d = cfg.diffusion
    if d.objective != "flow":
        if d.flow is not None:
            raise ConfigError("diffusion.flow: flow settings given but diffusion.objective="
                              f"{d.objective!r}; set diffusion.objective=flow or remove diffusion.flow")
        return
    d.flow = d.flow or FlowSection()
    f = d.flow
    allowed = {"diffusion.flow.path": (f.path, PATHS), "diffusion.flow.prediction": (f.prediction, PREDICTIONS),
               "diffusion.flow.loss_weight": (f.loss_weight, (None, "velocity", "likelihood")),
               "diffusion.flow.time_sampling": (f.time_sampling, ("uniform", "logit_normal"))}
    for key, (value, options) in allowed.items():
        if value not in options:
            raise ConfigError(f"{key}: got {value!r}; allowed: {', '.join(map(str, options))}")
    for key, value in (("train_eps", f.train_eps), ("sample_eps", f.sample_eps)):
        if value is not None and not 0.0 <= value < 0.5:
            raise ConfigError(f"diffusion.flow.{key}: got {value!r}; must be in [0, 0.5) or null (SiT's default)")
    if f.logit_std <= 0:
        raise ConfigError(f"diffusion.flow.logit_std: got {f.logit_std!r}; must be > 0")
    if d.loss_weighting != "constant":
        raise ConfigError(f"diffusion.loss_weighting: got {d.loss_weighting!r} with objective=flow; flow weights "
                          "its loss with diffusion.flow.loss_weight (set diffusion.loss_weighting=constant)")


def validate(cfg: Config, world_size: int | None = None) -> Config:
    """Range and choice checks; with `world_size`, also the batch split across ranks."""
    validate_flow(cfg)
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise bad_value(key, value, f"allowed: {', '.join(map(str, allowed))}")
    for key, (ok, desc) in RANGES.items():
        value = _get(cfg, key)
        if not ok(value):
            raise bad_value(key, value, f"must be {desc}")
    try:
        cfg.model.routing.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if world_size is not None:
        per_step = world_size * cfg.train.grad_accum
        if cfg.train.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size: got {cfg.train.global_batch_size}, not divisible by "
                f"world size {world_size} × train.grad_accum {cfg.train.grad_accum} = {per_step}; "
                f"use a multiple of {per_step}"
            )
    if cfg.data.mode == "global" and cfg.diffusion.loss_weighting == "ant_uw":
        # ANT-UW weighs per-cluster means of each rank's batch: not a sum of per-sample terms, so
        # its loss (not just its timesteps) would change with the world size.
        raise ConfigError("diffusion.loss_weighting=ant_uw cannot be used with data.mode=global: ANT-UW "
                          "averages losses per timestep cluster within each rank's batch, which depends on "
                          "the world size; use data.mode=resampled|epoch, or another diffusion.loss_weighting")
    if cfg.parallel.engine != "deepspeed" and cfg.parallel.offload:
        raise ConfigError("parallel.offload: CPU offload is a DeepSpeed feature; set parallel.engine=deepspeed")
    return cfg
