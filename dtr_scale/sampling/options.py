"""The sampler's `key=value` options: defaults, help text, parsing and validation."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional

import yaml

from .generate import SAMPLERS
from .guidance import PRECISIONS


@dataclass
class SampleOptions:
    num_samples: int = field(default=50000, metadata={"help": "images to generate (indices 0..N-1)"})
    seed: int = field(default=0, metadata={"help": "run seed in [0, 2**32); sample i depends only on (seed, i)"})
    sampler: str = field(default="ddpm", metadata={"help": "ddpm (ancestral) | ddim"})
    steps: Optional[str] = field(default=None, metadata={
        "help": "respacing: '250', 'ddim50', section lists '10,15,20' (default 250 for ddpm, ddim50 for ddim)"})
    eta: float = field(default=0.0, metadata={"help": "DDIM eta (0 = deterministic given x_T)"})
    cfg_scale: float = field(default=1.5, metadata={
        "help": "classifier-free guidance scale; 1.0 = no guidance (no doubled batch)"})
    cfg_channels: Optional[int] = field(default=None, metadata={
        "help": "guide only the first K latent channels; default all; 3 = DiT's published samples"})
    precision: str = field(default="fp32", metadata={
        "help": "fp32 | bf16 (autocast around the model; allowed on CPU too, as a numerics check)"})
    batch_size: int = field(default=32, metadata={"help": "images per model batch per rank (the guided call is 2x)"})
    labels: str = field(default="uniform", metadata={
        "help": "uniform (random from each sample's generator, as DiT/DTR) | balanced (i % num_classes)"})
    vae: Optional[str] = field(default=None, metadata={
        "help": "none (pixel mode) | PATH to a local diffusers AutoencoderKL; default: the weights' metadata"})
    png: bool = field(default=False, metadata={"help": "also write OUT/png/000123.png, one per index"})
    shard_size: int = field(default=500, metadata={"help": "consecutive indices per shard (the resume unit)"})
    max_shards_this_run: int = field(default=0, metadata={
        "help": "stop each rank after this many new shards (0 = no limit); rerun to finish"})
    progress: bool = field(default=True, metadata={"help": "tqdm bar with images/s on rank 0"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu | cuda (default: this rank's GPU if any)"})

    def resolved_steps(self) -> str:
        if self.steps is not None:
            return self.steps
        return "ddim50" if self.sampler == "ddim" else "250"

    def validate(self) -> "SampleOptions":
        def bad(key, expected):
            raise ValueError(f"{key}={getattr(self, key)!r}: expected {expected}")

        if self.num_samples < 1:
            bad("num_samples", "an integer >= 1")
        if not 0 <= self.seed < 2**32:
            bad("seed", "an integer in [0, 2**32)")
        if self.sampler not in SAMPLERS:
            bad("sampler", " | ".join(SAMPLERS))
        if self.eta < 0:
            bad("eta", "a number >= 0")
        if self.eta != 0 and self.sampler != "ddim":
            bad("eta", "0 unless sampler=ddim (eta is DDIM's noise level)")
        if self.cfg_scale < 0:
            bad("cfg_scale", "a number >= 0 (1.0 = no guidance)")
        if self.cfg_channels is not None and self.cfg_channels < 1:
            bad("cfg_channels", "a positive channel count, or 'all'")
        if self.precision not in PRECISIONS:
            bad("precision", " | ".join(PRECISIONS))
        if self.batch_size < 1:
            bad("batch_size", "an integer >= 1")
        if self.labels not in ("uniform", "balanced"):
            bad("labels", "uniform | balanced")
        if self.shard_size < 1:
            bad("shard_size", "an integer >= 1")
        if self.max_shards_this_run < 0:
            bad("max_shards_this_run", "an integer >= 0 (0 = no limit)")
        return self

    def fingerprint(self) -> dict:
        """What decides the images and their layout: a resumed run must agree on all of it."""
        keep = ("num_samples", "seed", "sampler", "eta", "cfg_scale", "cfg_channels", "precision",
                "labels", "vae", "shard_size")
        out = {k: getattr(self, k) for k in keep}
        out["steps"] = self.resolved_steps()
        return out


# Words that mean "use the default" for the options whose default is None ("none" is a real
# value for vae: pixel mode).
_DEFAULT_WORDS = {"cfg_channels": {"all", "none", "null", "default"},
                  "steps": {"none", "null", "default"},
                  "vae": {"default", "metadata"},
                  "device": {"none", "null", "default", "auto"}}


def _coerce(key: str, raw: str, tp) -> object:
    base = {Optional[int]: int, Optional[str]: str}.get(tp, tp)
    text = raw.strip()
    if text.lower() in _DEFAULT_WORDS.get(key, ()):
        return None
    if base is str:
        return text  # kept verbatim: steps=250 stays the string "250"
    value = yaml.safe_load(text)
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}={raw!r}: expected true or false")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}={raw!r}: expected an integer")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{key}={raw!r}: expected a number") from None
        return float(value)
    raise TypeError(f"unsupported option type {tp!r} for {key}")


def parse_options(pairs: list[str]) -> SampleOptions:
    """`["seed=3", "cfg_scale=4.0", ...]` -> validated SampleOptions."""
    hints = typing.get_type_hints(SampleOptions)
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"option {pair!r} must look like key=value (e.g. num_samples=1000)")
        key, raw = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in hints:
            raise ValueError(f"unknown option {key!r}; allowed: {', '.join(hints)}")
        values[key] = _coerce(key, raw, hints[key])
    return SampleOptions(**values).validate()


def options_help() -> str:
    lines = ["sampling options (key=value):"]
    for f in dataclasses.fields(SampleOptions):
        default = f.default if f.default is not None else "-"
        lines.append(f"  {f.name:<20} {f.metadata['help']} [default: {default}]")
    return "\n".join(lines)
