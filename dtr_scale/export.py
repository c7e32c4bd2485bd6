"""Export: `python -m dtr_scale.export --checkpoint DIR --out FILE.pt`.

Consolidates the EMA weights of a training checkpoint (any engine, any world size: all write the
same canonical DCP state) into one file in the official DiT layout, offline, in one process.
Writes FILE.pt as {"ema": state_dict, "dtr_scale": metadata}, which the official DiT sampling
script loads (it takes "ema"), and FILE.safetensors with the same tensors and metadata. The
metadata carries the model and routing config (with the DiT's time input), the objective's part
(its name and settings, written by the objective) and the data's latent scale, so `load_weights` and the sampler can
rebuild the model without the training config.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from .atomic import atomic_write, atomic_write_bytes
from .checkpoint import latest_checkpoint
from .checkpoint_meta import MODEL_KEYS, STATE_DIR, read_meta, verify_checkpoint_files
from .config import load_config
from .errors import UserError, run_cli
from .input_checks import writable_file
from .models import DiT, load_pretrained, official_state_dict
from .models.pretrained import EXPORT_FORMAT
from .objective import dit_from_config, objective_class
from .threads import configure_threads


def resolve_checkpoint(path: str, flag: str = "--checkpoint") -> str:
    """A run directory (uses its `latest`) or one step directory."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    if not os.path.exists(path):
        raise UserError(f"{flag} {path} does not exist; pass a training run directory (checkpoint.dir) "
                        "or one of its step_* directories")
    found = latest_checkpoint(path) if os.path.isdir(path) else None
    if not found:
        raise UserError(f"{flag} {path}: neither a checkpoint (no meta.json) nor a run directory with a "
                        "'latest' pointer; pass checkpoint.dir of a run that has saved, or a step_* directory")
    return found


def read_ema(ckpt: str, model: DiT) -> dict[str, torch.Tensor]:
    """EMA weights (official names, fp32) and the routing masks from the canonical state of
    `ckpt`, read by DCP into full tensors in this one process, whichever engine wrote it."""
    from .safe_checkpoint_io import dcp_load  # a checkpoint is untrusted input: nothing in it may run

    meta = read_meta(ckpt)
    verify_checkpoint_files(ckpt, meta["world_size"])
    want = {"ema": {n: torch.empty(p.shape, dtype=torch.float32) for n, p in model.named_parameters()}}
    if model.router is not None:
        want["model"] = {"dit.router.masks": torch.empty_like(model.router.masks)}
    dcp_load(want, os.path.join(ckpt, STATE_DIR), no_dist=True)
    out = want["ema"]
    if model.router is not None:
        out["router.masks"] = want["model"]["dit.router.masks"]
    return out


def export(checkpoint: str, out: str) -> tuple[str, str]:
    model, meta = checkpoint_ema(checkpoint)
    return write_weights(model, meta, out, training_only=read_training_only(meta["checkpoint"]))


TRAINING_ONLY_PREFIX = "repa."  # trained parameters of the objective that sampling never uses


def read_training_only(ckpt: str) -> dict[str, torch.Tensor]:
    """The objective's training-only parameters (REPA's projector: its trained weights, it has no
    EMA) from the canonical state, by their names in the objective; empty when the run had none."""
    from .safe_checkpoint_io import dcp_load, read_dcp_metadata

    state_dir = os.path.join(ckpt, STATE_DIR)
    index = read_dcp_metadata(state_dir).state_dict_metadata
    names = [k[len("model."):] for k in index if k.startswith("model." + TRAINING_ONLY_PREFIX)]
    if not names:
        return {}
    want = {"model": {n: torch.empty(tuple(index["model." + n].size), dtype=torch.float32) for n in names}}
    dcp_load(want, state_dir, no_dist=True)
    return want["model"]


def checkpoint_ema(checkpoint: str) -> tuple[DiT, dict]:
    """The EMA model of a training checkpoint (run dir or step dir) and its export metadata."""
    ckpt = resolve_checkpoint(checkpoint)
    cfg = load_config(os.path.join(ckpt, "config.yaml"))
    # Defaults for attention and checkpointing: the rebuilt model samples, it does not train.
    model = dit_from_config(cfg, attention="auto", checkpointing=0.0)
    load_pretrained(model, read_ema(ckpt, model))
    with open(os.path.join(ckpt, "meta.json")) as f:
        step = json.load(f)["step"]
    meta = {
        "format": EXPORT_FORMAT,
        "model": {k: getattr(cfg.model, k) for k in MODEL_KEYS}
                 | model.block_options.non_default()  # the modern block's options, if any: `sample` needs no flags
                 | {"time_input": model.time_input},  # flow: float t in [0, 1], rebuilt the same way
        "routing": model.routing.to_dict() if model.routing else None,
        "step": step,
        "checkpoint": os.path.abspath(ckpt),
        # schedule, objective name and its settings: the sampler needs no objective flags
        **objective_class(cfg.diffusion.objective).export_metadata(cfg),
        "data": data_identity(cfg.data.path),
    }
    return model, meta


def data_identity(path: str) -> dict:
    manifest = os.path.join(path, "dataset.json")
    if not os.path.isfile(manifest):
        return {"path": path}
    with open(manifest) as f:
        m = json.load(f)
    keys = ("latent_shape", "scale_factor", "shift_factor", "vae", "num_classes", "source", "resolution")
    return {"path": os.path.abspath(path), **{k: m[k] for k in keys if k in m}}


def write_weights(model: DiT, meta: dict, out: str, training_only: dict | None = None) -> tuple[str, str]:
    """Write `stem.pt` and `stem.safetensors` atomically; returns both paths. The sampling weights
    are the DiT's alone; `training_only` tensors (REPA's projector) go into the .pt under their
    own key, `training_only`, so that a run can take them up again."""
    from safetensors.torch import save

    stem = out[: -len(".safetensors")] if out.endswith(".safetensors") else os.path.splitext(out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in official_state_dict(model).items()}
    payload_meta = dict(meta)
    if model.router is not None and not _masks_match_config(model):
        payload_meta["router_masks"] = model.router.masks.cpu()  # adopted masks: not derivable
    pt, st = stem + ".pt", stem + ".safetensors"
    payload = {"ema": sd, "dtr_scale": payload_meta}
    if training_only:
        payload["training_only"] = {k: v.detach().float().cpu().contiguous() for k, v in training_only.items()}
    atomic_write(pt, lambda f: torch.save(payload, f))
    atomic_write_bytes(st, save(sd, metadata={k: json.dumps(v) for k, v in meta.items()}))
    return pt, st


def _masks_match_config(model: DiT) -> bool:
    from .models.routing import TaskRouter

    rebuilt = TaskRouter(model.routing, model.hidden_size, model.depth).masks
    return torch.equal(rebuilt, model.router.masks.cpu())


def check_args(args: argparse.Namespace) -> str:
    """The checkpoint (resolved to a step directory) and the output path, before any reading."""
    ckpt = resolve_checkpoint(args.checkpoint)
    writable_file(args.out, "--out")
    return ckpt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dtr_scale.export",
                                description="Export consolidated EMA weights (official DiT layout) from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="run directory (uses 'latest') or a step_* directory")
    p.add_argument("--out", required=True, help="output path; writes STEM.pt and STEM.safetensors")
    return p


def main(argv=None) -> int:
    configure_threads()  # before any tensor work: see dtr_scale/threads.py
    return run_cli(_export, build_parser().parse_args(argv))


def _export(args: argparse.Namespace) -> int:
    pt, st = export(check_args(args), args.out)
    print(f"exported EMA weights: {pt} and {st}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
