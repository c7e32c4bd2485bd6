"""What `--weights` may name: an exported weights file or a training checkpoint directory."""
from __future__ import annotations

import json
import os

from dtr_scale.models import DiT, load_pretrained, load_weights


def load_sampling_model(path: str) -> tuple[DiT, dict]:
    """(model in eval mode on the CPU, metadata as `dtr_scale.export` writes it).

    A directory is a training run (its `latest` checkpoint) or one `step_*` checkpoint: the EMA
    weights are read straight from the engine files, as export would, so sampling during a run
    needs no export step.
    """
    if os.path.isdir(path):
        return _from_checkpoint(path)
    if os.path.isfile(path):
        return load_weights(path)
    raise FileNotFoundError(
        f"--weights {path} does not exist: pass an exported weights file (.pt or .safetensors from "
        "`python -m dtr_scale.export --checkpoint RUN_DIR --out W.pt`) or a training run / step_* "
        "checkpoint directory")


def _from_checkpoint(path: str) -> tuple[DiT, dict]:
    from dtr_scale.config import load_config
    # export's helpers are the one definition of how engine files hold the EMA and how the
    # data's identity is recorded; reusing them keeps the two routes to the weights identical.
    from dtr_scale.export import data_identity, model_from_config, read_ema, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    cfg = load_config(os.path.join(ckpt, "config.yaml"))
    model = model_from_config(cfg)
    load_pretrained(model, read_ema(ckpt, model))
    with open(os.path.join(ckpt, "meta.json")) as f:
        step = json.load(f)["step"]
    meta = {
        "model": {k: getattr(cfg.model, k) for k in ("name", "input_size", "in_channels", "num_classes",
                                                      "learn_sigma", "class_dropout_prob")},
        "routing": model.routing.to_dict() if model.routing else None,
        "step": step,
        "checkpoint": os.path.abspath(ckpt),
        "diffusion": {"schedule": cfg.diffusion.schedule, "steps": cfg.diffusion.steps},
        "data": data_identity(cfg.data.path),
    }
    return model.eval(), meta


def weights_identity(meta: dict) -> dict:
    """The part of the metadata that names the weights, for the resume check of a sample run."""
    return {"model": meta.get("model"), "routing": meta.get("routing"), "step": meta.get("step"),
            "checkpoint": meta.get("checkpoint")}
