"""Training objectives: one class per objective behind the interface of base.py, found by the
value of `diffusion.objective` (the registry), so no other module needs to know which one runs.

    objective = build_objective(cfg, dit_from_config(cfg))
    loss, per_sample = objective(x, t, y, noise, drop)

Adding an objective: a file here with a registered `Objective` subclass; every module of this
package is imported below, so the registry finds it (see docs/architecture.md, "Adding an
objective or a loss term").
"""
from __future__ import annotations

import importlib
import pkgutil

from ..models import DiT, create_model
from ..models.block_options import block_options
from .base import DEFAULT_OBJECTIVE, Objective, objective_class, objective_names
from .ddpm import DDPMObjective
from .flow import FlowObjective, FlowSolver, transport_from_section
from .repa import RepaAlignment, check_repa_inputs, validate_repa_config

for _module in pkgutil.iter_modules(__path__):  # registers the objectives of the other files
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DEFAULT_OBJECTIVE", "DDPMObjective", "FlowObjective", "FlowSolver", "Objective", "build_objective",
           "check_repa_inputs", "dit_from_config", "objective_class", "objective_names", "transport_from_section", "validate_repa_config"]


def dit_from_config(cfg, **overrides) -> DiT:
    """The DiT that `cfg.model` describes (shape fields filled in), with the time input of the
    objective; `overrides` replace create_model arguments, e.g. attention="auto" for a model
    rebuilt for sampling."""
    m = cfg.model
    kwargs = dict(input_size=m.input_size, in_channels=m.in_channels, num_classes=m.num_classes,
                  learn_sigma=m.learn_sigma, class_dropout_prob=m.class_dropout_prob,
                  routing=m.routing, attention=m.attention, checkpointing=m.checkpointing,
                  time_input=objective_class(cfg.diffusion.objective).time_input, block=block_options(m))
    return create_model(m.name, **{**kwargs, **overrides})


def build_objective(cfg, dit: DiT) -> Objective:
    """The objective `cfg.diffusion` names, training `dit`, with REPA's term when `repa.enabled`."""
    objective = objective_class(cfg.diffusion.objective).from_config(cfg, dit)
    if cfg.repa.enabled:
        objective.repa = RepaAlignment.from_config(cfg, dit)
    return objective
