"""Typed experiment configuration: YAML files, dotted command-line overrides, validation.

    cfg = load_config("configs/digits-tiny.yaml", ["model.routing.sharing_ratio=0.6"])

Every key has a type and a default here; a YAML file or an override that names an unknown key,
gives a value of the wrong type or one out of range is an error that names the key, the value
given and what is allowed. `to_yaml(cfg)` is what training prints at start and saves beside the
checkpoints, so a run can always be reproduced from its own directory.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any

import yaml

from .config_schema import (CHOICES, RANGES, CheckpointSection, Config, DataSection,  # noqa: F401
                            DiffusionSection, EvalSection, FlowSection, LogSection, ModelSection,
                            ParallelSection, TrainSection)
from .errors import UserError
from .models.block_options import block_options
from .models.sizes import parse_model_name
from .objective import objective_class, objective_names, validate_repa_config


class ConfigError(UserError):
    """A bad configuration value; the message names the dotted key."""


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


def config_key(f: dataclasses.Field) -> str:
    """The key users write for a field: its name, or the one its metadata gives where the name
    cannot be a Python identifier (checkpoint.async)."""
    return f.metadata.get("key", f.name)


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {config_key(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" under {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s}; allowed keys{where}: {', '.join(fields)}")
    kwargs = {}
    for key, value in data.items():
        f = fields[key]
        # A field may name words that mean "its default of None" (e.g. the sampler's cfg_channels=all).
        if isinstance(value, str) and value.lower() in f.metadata.get("none_words", ()):
            value = None
        kwargs[f.name] = _coerce(prefix + key, value, hints[f.name])
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


def to_dict(cfg: Any) -> dict:
    """The config as the nested mapping users write (keys as in YAML, see `config_key`)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[config_key(f)] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


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
        _, hidden, heads, _ = parse_model_name(cfg.model.name)
        block_options(cfg.model).validate(hidden, heads)  # e.g. rope2d needs head size % 4 == 0
        validate_repa_config(cfg)
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
