"""What `--weights` may name: an exported weights file, a training checkpoint directory, or an
official DiT / SiT checkpoint (no metadata: the `model=` option names the network)."""
from __future__ import annotations

import os

from dtr_scale.config import bad_value
from dtr_scale.errors import UserError
from dtr_scale.models import DiT, create_model, load_pretrained, load_weights
from dtr_scale.models.pretrained import read_weights_file
from dtr_scale.objective import DEFAULT_OBJECTIVE, objective_class


def load_sampling_model(path: str, *, model: str | None = None, objective: str | None = None) -> tuple[DiT, dict]:
    """(model in eval mode on the CPU, metadata as `dtr_scale.export` writes it, with the
    resolved `objective`).

    A directory is a training run (its `latest` checkpoint) or one `step_*` checkpoint: the EMA
    weights are read straight from the checkpoint's state, as export would, so sampling during a run
    needs no export step. `objective` (ddpm | flow) is needed only for weights whose metadata
    does not record it; the model gets that objective's time input (flow: float t in [0, 1]).
    """
    if os.path.isdir(path):
        dit, meta = _from_checkpoint(path)
    elif os.path.isfile(path):
        sd, meta = read_weights_file(path)
        if "model" in meta:
            dit, meta = load_weights(path, time_input=objective_class(_objective(meta, objective)).time_input)
        else:
            dit, meta = _official(path, sd, model, _objective(meta, objective))
    else:
        raise FileNotFoundError(
            f"--weights {path} does not exist: pass an exported weights file (.pt or .safetensors from "
            "`python -m dtr_scale.export --checkpoint RUN_DIR --out W.pt`) or a training run / step_* "
            "checkpoint directory")
    return dit, {**meta, "objective": _objective(meta, objective)}


def _objective(meta: dict, wanted: str | None) -> str:
    recorded = meta.get("objective")
    if wanted is not None and recorded is not None and wanted != recorded:
        raise bad_value("objective", wanted, f"the weights were trained with objective={recorded}; leave it unset")
    return wanted or recorded or DEFAULT_OBJECTIVE


def _official(path: str, sd: dict, name: str | None, objective: str) -> tuple[DiT, dict]:
    """An official DiT or SiT checkpoint: the shapes come from the tensors, the size from `name`.

    SiT's networks are DiT's (same keys; SiT-XL-2-256.pt has learn_sigma=True, 2C output
    channels, of which flow sampling reads the first C), so SiT-* names build the DiT-* model."""
    if name is None:
        raise bad_value("model", None, f"{path} has no dtr-scale metadata (an official DiT/SiT checkpoint?): "
                        "name its network, e.g. model=DiT-XL/2 or model=SiT-XL/2")
    dit_name = "DiT-" + name[len("SiT-"):] if name.startswith("SiT-") else name
    try:
        hidden, channels, patch, _ = sd["x_embedder.proj.weight"].shape
        num_patches = sd["pos_embed"].shape[1]
        out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
        table = sd["y_embedder.embedding_table.weight"].shape[0]
    except KeyError as exc:
        raise UserError(f"{path}: not a DiT/SiT state dict (no {exc.args[0]})") from None
    side = int(round(num_patches ** 0.5)) * patch
    shape = dict(input_size=side, in_channels=channels, num_classes=table - 1,
                 learn_sigma=out_channels == 2 * channels)
    dit = create_model(dit_name, **shape, time_input=objective_class(objective).time_input)
    load_pretrained(dit, path)
    meta = {"model": {"name": dit_name, **shape}, "routing": None, "official": os.path.abspath(path)}
    return dit.eval(), meta


def _from_checkpoint(path: str) -> tuple[DiT, dict]:
    # export's reader is the one definition of where a checkpoint holds the EMA and how the
    # data's identity is recorded; reusing it keeps the two routes to the weights identical.
    from dtr_scale.export import checkpoint_ema

    model, meta = checkpoint_ema(path)
    return model.eval(), meta


def weights_identity(meta: dict) -> dict:
    """The part of the metadata that names the weights, for the resume check of a sample run."""
    return {"model": meta.get("model"), "routing": meta.get("routing"), "step": meta.get("step"),
            "checkpoint": meta.get("checkpoint") or meta.get("official")}
