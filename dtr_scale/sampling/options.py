"""The sampler's `key=value` options: defaults, help text and validation.

An option that only one objective's sampler reads carries that objective's name in its field
metadata ("objective"); such options must stay at their default for weights of another objective,
and a sampling run's fingerprint holds the options of the weights' objective only.

Parsing and typing are the training config's (`config.from_key_values`), so a bad option gets the
same message as a bad training override: the key, the value given and what is allowed."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Optional

from ..config import bad_value, from_key_values
from ..flow import DIFFUSION_FORMS, ODE_METHODS, PATHS, PREDICTIONS, SDE_METHODS
from ..objective import DEFAULT_OBJECTIVE, objective_class, objective_names
from ..objective.flow import FLOW_SAMPLERS
from .generate import SAMPLERS
from .guidance import PRECISIONS


@dataclass
class SampleOptions:
    num_samples: int = field(default=50000, metadata={"help": "images to generate (indices 0..N-1)"})
    seed: int = field(default=0, metadata={"help": "run seed in [0, 2**32); sample i depends only on (seed, i)"})
    sampler: str = field(default="ddpm", metadata={"objective": "ddpm", "help": "ddpm (ancestral) | ddim"})
    steps: Optional[str] = field(default=None, metadata={"objective": "ddpm", "none_words": ("none", "default"),
        "help": "respacing: '250', 'ddim50', section lists '10,15,20' (default 250 for ddpm, ddim50 for ddim)"})
    eta: float = field(default=0.0, metadata={"objective": "ddpm", "help": "DDIM eta (0 = deterministic given x_T)"})
    cfg_scale: float = field(default=1.5, metadata={
        "help": "classifier-free guidance scale; 1.0 = no guidance (no doubled batch)"})
    cfg_channels: Optional[int] = field(default=None, metadata={"none_words": ("all", "none", "default"),
        "help": "guide only the first K latent channels; default all; 3 = DiT's published samples"})
    precision: str = field(default="fp32", metadata={
        "help": "fp32 | bf16 (autocast around the model; allowed on CPU too, as a numerics check)"})
    batch_size: int = field(default=32, metadata={"help": "images per model batch per rank (the guided call is 2x)"})
    labels: str = field(default="uniform", metadata={
        "help": "uniform (random from each sample's generator, as DiT/DTR) | balanced (i % num_classes)"})
    vae: Optional[str] = field(default=None, metadata={"none_words": ("default", "metadata"),
        "help": "none (pixel mode) | PATH to a local diffusers AutoencoderKL; default: the weights' metadata"})
    png: bool = field(default=False, metadata={"help": "also write OUT/png/000123.png, one per index"})
    shard_size: int = field(default=500, metadata={"help": "consecutive indices per shard (the resume unit)"})
    max_shards_this_run: int = field(default=0, metadata={
        "help": "stop each rank after this many new shards (0 = no limit); rerun to finish"})
    progress: bool = field(default=True, metadata={"help": "tqdm bar with images/s on rank 0"})
    device: Optional[str] = field(default=None, metadata={"none_words": ("none", "default", "auto"), "help": "cpu | cuda (default: this rank's GPU if any)"})
    compile: str = field(default="auto", metadata={
        "help": "torch.compile each DiT block: true | false | auto (= on CUDA only)"})
    # Weights without our metadata (official DiT / SiT checkpoints) and flow matching.
    objective: Optional[str] = field(default=None, metadata={"none_words": ("default", "metadata"),
        "help": "ddpm | flow; default: the weights' metadata (ddpm if it names none)"})
    model: Optional[str] = field(default=None, metadata={"none_words": ("none", "default", "metadata"),
        "help": "model name (DiT-XL/2; SiT-XL/2 = the same network) for weights without metadata"})
    flow_path: Optional[str] = field(default=None, metadata={"objective": "flow", "none_words": ("default", "metadata"),
        "help": "flow: Linear | GVP | VP; default: the weights' metadata, else Linear (SiT)"})
    flow_prediction: Optional[str] = field(default=None, metadata={"objective": "flow", "none_words": ("default", "metadata"),
        "help": "flow: velocity | noise | score; default: the weights' metadata, else velocity"})
    flow_sampler: str = field(default="ode", metadata={"objective": "flow", "help": "flow: ode | sde"})
    ode_method: str = field(default="dopri5", metadata={"objective": "flow", "help": "flow ODE solver (torchdiffeq): euler | heun2 | dopri5 | ..."})
    num_steps: int = field(default=250, metadata={"objective": "flow", "help": "flow: times on the ODE/SDE grid (SiT's sample.py: 250)"})
    atol: float = field(default=1e-6, metadata={"objective": "flow", "help": "flow ODE absolute tolerance (adaptive solvers)"})
    rtol: float = field(default=1e-3, metadata={"objective": "flow", "help": "flow ODE relative tolerance (adaptive solvers)"})
    sde_method: str = field(default="Euler", metadata={"objective": "flow", "help": "flow SDE: Euler (Euler-Maruyama) | Heun"})
    diffusion_form: str = field(default="sigma", metadata={"objective": "flow", 
        "help": "flow SDE diffusion (SiT's sample.py default: sigma): " + " | ".join(DIFFUSION_FORMS)})
    diffusion_norm: float = field(default=1.0, metadata={"objective": "flow", "help": "flow SDE diffusion scale"})
    last_step: str = field(default="Mean", metadata={"objective": "flow", "help": "flow SDE last step: Mean | Tweedie | Euler | none"})
    last_step_size: float = field(default=0.04, metadata={"objective": "flow", "help": "flow SDE last step size"})
    guidance_low: float = field(default=0.0, metadata={"objective": "flow", "help": "flow: guide only for t >= this (t = 0 noise)"})
    guidance_high: float = field(default=1.0, metadata={"objective": "flow", "help": "flow: guide only for t <= this (t = 1 data)"})

    def resolved_steps(self) -> str:
        if self.steps is not None:
            return self.steps
        return "ddim50" if self.sampler == "ddim" else "250"

    def validate(self) -> "SampleOptions":
        def bad(key, allowed):
            raise bad_value(key, getattr(self, key), f"allowed: {allowed}")

        if self.num_samples < 1:
            bad("num_samples", "an integer >= 1")
        if not 0 <= self.seed < 2**32:
            bad("seed", "an integer in [0, 2**32)")
        if self.sampler not in SAMPLERS:
            bad("sampler", " | ".join(SAMPLERS))
        if self.steps is not None and not re.fullmatch(r"\s*(ddim[1-9]\d*|[1-9]\d*(\s*,\s*[1-9]\d*)*)\s*", self.steps):
            bad("steps", "'250' (steps spread evenly), 'ddim50' (DDIM's even stride) or sections '10,15,20'")
        # Written so that NaN fails (NaN compares false): `not (x >= 0)`, never `x < 0`.
        if not (math.isfinite(self.eta) and self.eta >= 0):
            bad("eta", "a finite number >= 0")
        if self.eta != 0 and self.sampler != "ddim":
            bad("eta", "0 unless sampler=ddim (eta is DDIM's noise level)")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            bad("cfg_scale", "a finite number >= 0 (1.0 = no guidance)")
        if self.cfg_channels is not None and self.cfg_channels < 1:
            bad("cfg_channels", "a positive channel count, or 'all'")
        if self.precision not in PRECISIONS:
            bad("precision", " | ".join(PRECISIONS))
        if self.batch_size < 1:
            bad("batch_size", "an integer >= 1")
        if self.labels not in ("uniform", "balanced"):
            bad("labels", "uniform | balanced")
        if self.compile not in ("auto", "true", "false"):
            bad("compile", "auto | true | false")
        if self.shard_size < 1:
            bad("shard_size", "an integer >= 1")
        if self.max_shards_this_run < 0:
            bad("max_shards_this_run", "an integer >= 0 (0 = no limit)")
        self._validate_flow(bad)
        return self

    def _validate_flow(self, bad) -> None:
        choices = {"objective": (None, *objective_names()), "flow_path": (None, *PATHS),
                   "flow_prediction": (None, *PREDICTIONS), "flow_sampler": FLOW_SAMPLERS,
                   "ode_method": ODE_METHODS, "sde_method": SDE_METHODS, "diffusion_form": DIFFUSION_FORMS,
                   "last_step": ("Mean", "Tweedie", "Euler", "none")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(key, " | ".join(a for a in allowed if a is not None))
        if self.num_steps < 2:
            bad("num_steps", "an integer >= 2 (the flow grid's times, both ends included)")
        for key in ("atol", "rtol"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                bad(key, "a finite number > 0")
        if not (math.isfinite(self.diffusion_norm) and self.diffusion_norm >= 0):
            bad("diffusion_norm", "a finite number >= 0")
        if not 0 <= self.last_step_size < 1:
            bad("last_step_size", "a number in [0, 1)")
        for key in ("guidance_low", "guidance_high"):
            if not 0 <= getattr(self, key) <= 1:
                bad(key, "a flow time in [0, 1] (t = 0 noise, t = 1 data)")
        if self.guidance_low > self.guidance_high:
            bad("guidance_low", f"at most guidance_high ({self.guidance_high})")

    def check_objective(self, objective: str) -> None:
        """Options that only another objective reads must be unset, once the weights have named
        the objective (the first such option, in field order, is reported)."""
        cls = objective_class(objective)
        for f in dataclasses.fields(self):
            owner = f.metadata.get("objective")
            if owner not in (None, objective) and getattr(self, f.name) != f.default:
                raise bad_value(f.name, getattr(self, f.name), f"allowed: {cls.foreign_option(owner)}")

    def guidance_interval(self) -> tuple[float, float]:
        return self.guidance_low, self.guidance_high

    def fingerprint(self, objective: str = DEFAULT_OBJECTIVE) -> dict:
        """What decides the images and their layout: a resumed run must agree on all of it. The
        options every objective reads, then the weights' objective's own (with `steps`
        resolved). DDPM runs keep the keys they always had (no `objective` key)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name in _COMMON_KEYS or f.metadata.get("objective") == objective}
        if "steps" in out:
            out["steps"] = self.resolved_steps()
        if self.model is not None:
            out["model"] = self.model
        if objective != DEFAULT_OBJECTIVE:
            out["objective"] = objective
        return out


_COMMON_KEYS = ("num_samples", "seed", "cfg_scale", "cfg_channels", "precision", "labels", "vae", "shard_size")


def parse_options(pairs: list[str]) -> SampleOptions:
    """`["seed=3", "cfg_scale=4.0", ...]` -> validated SampleOptions (`cfg-scale` = `cfg_scale`)."""
    return from_key_values(SampleOptions, [_underscored(p) for p in pairs]).validate()


def _underscored(pair: str) -> str:
    key, eq, value = pair.partition("=")
    return key.strip().replace("-", "_") + eq + value


def options_help() -> str:
    lines = ["sampling options (key=value):"]
    for f in dataclasses.fields(SampleOptions):
        default = f.default if f.default is not None else "-"
        lines.append(f"  {f.name:<20} {f.metadata['help']} [default: {default}]")
    return "\n".join(lines)
