"""The choice of objective is made in one place: the objectives' own files.

Everywhere else (config, loop, in-loop evaluation, export, the sampler CLI, the engines, the demo,
the benchmarks, the launchers) asks the registry in dtr_scale/objective/, so a third objective is a
new file there plus its config section and tests (docs/architecture.md, "Adding an objective or a
loss term"). These tests read the source for the branches that would break that.
"""
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The objectives' own files: their classes, and the math each one is built on.
OWN = ("dtr_scale/objective/ddpm.py", "dtr_scale/objective/flow.py", "dtr_scale/diffusion/", "dtr_scale/flow/")
NAMES = r"(?:ddpm|flow)"
BRANCHES = [
    re.compile(rf"""(?:==|!=)\s*["']{NAMES}["']"""),  # x == "flow"
    re.compile(rf"""["']{NAMES}["']\s*(?:==|!=)"""),  # "flow" == x
    re.compile(rf"""\bin\s*[(\[{{]\s*["']{NAMES}["']"""),  # x in ("ddpm", ...)
    re.compile(r"""objective\s*(?:==|!=)\s*["']"""),  # objective == "..."
    re.compile(r"isinstance\([^)]*\b(?:FlowSolver|FlowObjective|DDPMObjective|Transport|GaussianDiffusion)\b"),
]


def python_files():
    for top in ("dtr_scale", "benchmarks", "launch", "data_prep"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.relpath(os.path.join(root, name), REPO)
                    if not path.startswith(OWN):
                        yield path


def branches_in(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(p.search(line) for p in BRANCHES)]


@pytest.mark.parametrize("line", [
    'if cfg.diffusion.objective == "flow":', "if 'ddpm' != name:", 'time_input = "continuous" if objective == "x" else y',
    'if meta["objective"] in ("ddpm", "flow"):', "if isinstance(diffusion, FlowSolver):",
])
def test_the_check_sees_a_branch(line):
    assert branches_in(line) == [line]


def test_the_check_lets_registry_lookups_pass():
    assert branches_in('objective_class(cfg.diffusion.objective).time_input\nsampler == "ddim"') == []


def test_no_file_outside_the_objectives_branches_on_an_objective_name():
    found = {}
    for path in python_files():
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            hits = branches_in(f.read())
        if hits:
            found[path] = hits
    assert not found, f"branches on an objective's name outside its own files: {found}"


def test_the_registry_knows_every_objective_and_config_offers_exactly_those():
    from dtr_scale.config import ConfigError, load_config
    from dtr_scale.objective import objective_class, objective_names

    assert set(objective_names()) == {"ddpm", "flow"}
    for name in objective_names():
        cls = objective_class(name)
        assert cls.name == name and load_config(None, [f"diffusion.objective={name}"]).diffusion.objective == name
    with pytest.raises(ConfigError, match="diffusion.objective: got 'edm'; allowed: ddpm, flow"):
        load_config(None, ["diffusion.objective=edm"])
