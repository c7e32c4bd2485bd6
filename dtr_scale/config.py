"""Typed experiment configuration: YAML files, dotted command-line overrides, validation.

    cfg = load_config("configs/digits-tiny.yaml", ["model.routing.sharing_ratio=0.6"])

Every key has a type and a default here; a YAML file or an override that names an unknown key,
gives a value of the wrong type or one out of range is an error that names the key, the value
given and what is allowed. `to_yaml(cfg)` is what training prints at start and saves beside the
checkpoints, so a run can always be reproduced from its own directory.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from .errors import UserError
from .models.attention import ATTENTION_BACKENDS
from .models.dit import DIT_MODELS
from .models.routing import RoutingConfig
from .objective import objective_class, objective_names


class ConfigError(UserError):
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
    objective: str = "ddpm"  # a registered objective (dtr_scale/objective/): ddpm (DiT/ADM) | flow (SiT)
    flow: Optional[FlowSection] = None  # the flow objective's section (defaults filled in when chosen)
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
    overwrite: bool = False  # let resume=none delete the checkpoints (and config.yaml) already in dir


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
    "data.mode": ("epoch", "resampled", "global"),
    "data.on_error": ("skip", "raise"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "parallel.engine": ("single", "ddp", "fsdp", "deepspeed"),
    "model.compile": ("auto", "true", "false"),
    "parallel.zero_stage": (1, 2, 3),
    "eval.extractor": ("pixels", "inception"),
    "log.wandb_mode": ("auto", "online", "offline", "disabled"),
}

# key -> (predicate, description of the allowed range). Every predicate is written so that NaN
# fails it (NaN compares false, so `not (v >= 0)` refuses it where `v < 0` would let it through),
# and floats must be finite unless said otherwise.
def _finite(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def ok(v) -> bool:
        if not math.isfinite(v):
            return False
        if lo is not None and not (v > lo if lo_open else v >= lo):
            return False
        return hi is None or bool(v < hi if hi_open else v <= hi)
    return ok


RANGES = {
    "model.checkpointing": (_finite(0.0, 1.0), "a fraction in [0, 1]"),
    "model.class_dropout_prob": (_finite(0.0, 1.0, hi_open=True), "in [0, 1)"),
    "diffusion.steps": (lambda v: v >= 2, ">= 2"),
    "diffusion.ant_clusters": (lambda v: v >= 1, ">= 1"),
    "diffusion.snr_gamma": (_finite(0.0, lo_open=True), "a finite number > 0"),
    "diffusion.p2_gamma": (_finite(), "a finite number"),
    "diffusion.p2_k": (_finite(0.0, lo_open=True), "a finite number > 0"),
    "diffusion.ant_lr": (_finite(0.0), "a finite number >= 0"),
    "train.global_batch_size": (lambda v: v >= 1, ">= 1"),
    "train.grad_accum": (lambda v: v >= 1, ">= 1"),
    "train.max_steps": (lambda v: v >= 0, ">= 0"),
    "train.lr": (_finite(0.0, lo_open=True), "a finite number > 0"),
    "train.weight_decay": (_finite(0.0), "a finite number >= 0"),
    "train.beta1": (_finite(0.0, 1.0, hi_open=True), "in [0, 1)"),
    "train.beta2": (_finite(0.0, 1.0, hi_open=True), "in [0, 1)"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0 (0 = no warm-up)"),
    "train.ema_decay": (_finite(0.0, 1.0, hi_open=True), "in [0, 1)"),
    "train.grad_clip": (_finite(0.0), "a finite number >= 0 (0 = off)"),
    "train.log_every": (lambda v: v >= 1, ">= 1"),
    "train.max_consecutive_nonfinite": (lambda v: v >= 1, ">= 1"),
    "train.preempt_check_every": (lambda v: v >= 1, ">= 1"),
    "train.sample_every": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "checkpoint.every": (lambda v: v >= 1, ">= 1"),
    "checkpoint.keep": (lambda v: v >= 1, ">= 1"),
    "data.num_workers": (lambda v: v >= 0, ">= 0"),
    "data.shuffle_buffer": (lambda v: v >= 0, ">= 0 (0 or 1 = no shuffle buffer)"),
    "eval.every": (lambda v: v >= 0, ">= 0 (0 = no in-loop evaluation)"),
    "eval.num_samples": (lambda v: v >= 1, ">= 1"),
    "eval.cfg_scale": (_finite(0.0), "a finite number >= 0 (1.0 = no guidance)"),
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
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(exc)}); "
                          "quote it, e.g. key='value'") from None


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
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory; pass the YAML file itself "
                              "(e.g. configs/digits-tiny.yaml)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}; fix the file "
                              "(indent with spaces, quote values holding ':' or '#')") from None
        except (UnicodeDecodeError, PermissionError) as exc:
            raise ConfigError(f"config file {path} cannot be read ({exc}); pass a readable YAML text file") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(apply_overrides(data, list(overrides)))


def _yaml_problem(exc: Exception) -> str:
    """'line L, column C: PROBLEM' from PyYAML's multi-line message."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def bad_value(key: str, value: Any, allowed: str) -> ConfigError:
    """The one message format for a value out of range: `key: got VALUE; ALLOWED`."""
    return ConfigError(f"{key}: got {value!r}; {allowed}")


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate_objective(cfg: Config) -> None:
    """The objective's own sub-section of `diffusion` is filled with its defaults; another
    objective's sub-section is a mistake; then the objective checks its settings."""
    d = cfg.diffusion
    if d.objective not in objective_names():
        raise bad_value("diffusion.objective", d.objective, f"allowed: {', '.join(objective_names())}")
    chosen = objective_class(d.objective)
    for name in objective_names():
        section = objective_class(name).config_section
        if section and name != d.objective and getattr(d, section) is not None:
            raise ConfigError(f"diffusion.{section}: {section} settings given but diffusion.objective="
                              f"{d.objective!r}; set diffusion.objective={name} or remove diffusion.{section}")
    if chosen.config_section and getattr(d, chosen.config_section) is None:
        section_type = typing.get_args(typing.get_type_hints(DiffusionSection)[chosen.config_section])[0]
        setattr(d, chosen.config_section, section_type())
    try:
        chosen.validate_config(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def validate(cfg: Config, world_size: int | None = None) -> Config:
    """Range and choice checks; with `world_size`, also the batch split across ranks."""
    validate_objective(cfg)
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
    if cfg.parallel.engine != "deepspeed" and cfg.parallel.offload:
        raise ConfigError("parallel.offload: CPU offload is a DeepSpeed feature; set parallel.engine=deepspeed")
    return cfg
