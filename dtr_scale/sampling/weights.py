"""What `--weights` may name: an exported weights file or a training checkpoint directory."""
from __future__ import annotations

import os

from dtr_scale.models import DiT, load_weights


def load_sampling_model(path: str) -> tuple[DiT, dict]:
    """(model in eval mode on the CPU, metadata as `dtr_scale.export` writes it).

    A directory is a training run (its `latest` checkpoint) or one `step_*` checkpoint: the EMA
    weights are read straight from the checkpoint's state, as export would, so sampling during a run
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
    # export's reader is the one definition of where a checkpoint holds the EMA and how the
    # data's identity is recorded; reusing it keeps the two routes to the weights identical.
    from dtr_scale.export import checkpoint_ema

    model, meta = checkpoint_ema(path)
    return model.eval(), meta


def weights_identity(meta: dict) -> dict:
    """The part of the metadata that names the weights, for the resume check of a sample run."""
    return {"model": meta.get("model"), "routing": meta.get("routing"), "step": meta.get("step"),
            "checkpoint": meta.get("checkpoint")}
