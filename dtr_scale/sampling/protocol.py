"""The sampling half of a metric's protocol (see dtr_scale/protocol.py), for `sample`'s sidecar."""
from __future__ import annotations

import datetime
import os

from dtr_scale.code_version import code_version
from dtr_scale.file_hash import file_sha256
from dtr_scale.objective import objective_class
from dtr_scale.protocol import state_sha256

from .options import SampleOptions


def weights_record(path: str, meta: dict, model) -> dict:
    """Which weights: a file's sha256, or for a checkpoint directory the sha256 of its EMA state as
    loaded; the training step and whether they are the EMA (our exports and checkpoints hold the
    EMA; an official state dict does not say)."""
    ours = "format" in meta or "checkpoint" in meta
    if os.path.isfile(path):
        sha, of = file_sha256(path), "file"
    else:
        sha, of = state_sha256(model.state_dict()), "ema state (checkpoint directory)"
    return {"path": os.path.abspath(path), "sha256": sha, "sha256_of": of, "step": meta.get("step"),
            "ema": True if ours else None, "model": meta.get("model"), "routing": meta.get("routing")}


def sample_protocol(opts: SampleOptions, meta: dict, weights: str, model, vae: str, nfe) -> dict:
    objective = meta["objective"]
    return {
        "num_samples": opts.num_samples,
        "objective": objective,
        **objective_class(objective).sampler_protocol(opts),  # sampler, steps, label
        "nfe": nfe,
        "cfg_scale": opts.cfg_scale,
        "cfg_channels": opts.cfg_channels,  # None = every latent channel
        "guidance_interval": list(opts.guidance_interval()),  # flow time; DDPM: the whole trajectory
        "labels": opts.labels,
        "num_classes": model.num_classes,
        "seed": opts.seed,
        "precision": opts.precision,
        "vae": vae,
        "weights": weights_record(weights, meta, model),
        "code": code_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
