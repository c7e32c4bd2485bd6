"""Export: `python -m dtr_scale.export --checkpoint DIR --out FILE.pt`.

Consolidates the EMA weights of a training checkpoint (any engine, any world size: all write the
same canonical DCP state) into one file in the official DiT layout, offline, in one process.
Writes FILE.pt as {"ema": state_dict, "dtr_scale": metadata}, which the official DiT sampling
script loads (it takes "ema"), and FILE.safetensors with the same tensors and metadata. The
metadata carries the model and routing config (with the DiT's time input), the objective (ddpm |
flow, with the flow settings) and the data's latent scale, so `load_weights` and the sampler can
rebuild the model without the training config.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from .atomic import atomic_write, atomic_write_bytes
from .checkpoint import latest_checkpoint
from .checkpoint_meta import STATE_DIR, read_meta, verify_checkpoint_files
from .config import load_config
from .models import DiT, load_pretrained, official_state_dict
from .models.pretrained import EXPORT_FORMAT
from .objective import dit_from_config
from .threads import configure_threads


def resolve_checkpoint(path: str) -> str:
    """A run directory (uses its `latest`) or one step directory."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    found = latest_checkpoint(path) if os.path.isdir(path) else None
    if not found:
        raise FileNotFoundError(f"--checkpoint {path}: neither a checkpoint (no meta.json) nor a run directory with a 'latest' pointer")
    return found


def read_ema(ckpt: str, model: DiT) -> dict[str, torch.Tensor]:
    """EMA weights (official names, fp32) and the routing masks from the canonical state of
    `ckpt`, read by DCP into full tensors in this one process, whichever engine wrote it."""
    import torch.distributed.checkpoint as dcp

    meta = read_meta(ckpt)
    verify_checkpoint_files(ckpt, meta["world_size"])
    want = {"ema": {n: torch.empty(p.shape, dtype=torch.float32) for n, p in model.named_parameters()}}
    if model.router is not None:
        want["model"] = {"dit.router.masks": torch.empty_like(model.router.masks)}
    dcp.load(want, checkpoint_id=os.path.join(ckpt, STATE_DIR), no_dist=True)
    out = want["ema"]
    if model.router is not None:
        out["router.masks"] = want["model"]["dit.router.masks"]
    return out


def export(checkpoint: str, out: str) -> tuple[str, str]:
    return write_weights(*checkpoint_ema(checkpoint), out)


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
        "model": {k: getattr(cfg.model, k) for k in ("name", "input_size", "in_channels", "num_classes",
                                                      "learn_sigma", "class_dropout_prob")}
                 | {"time_input": model.time_input},  # flow: float t in [0, 1], rebuilt the same way
        "routing": model.routing.to_dict() if model.routing else None,
        "step": step,
        "checkpoint": os.path.abspath(ckpt),
        "diffusion": {"schedule": cfg.diffusion.schedule, "steps": cfg.diffusion.steps},
        "objective": cfg.diffusion.objective,  # so the sampler needs no objective=/flow flags
        "flow": dataclasses.asdict(cfg.diffusion.flow) if cfg.diffusion.flow is not None else None,
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


def write_weights(model: DiT, meta: dict, out: str) -> tuple[str, str]:
    """Write `stem.pt` and `stem.safetensors` atomically; returns both paths."""
    from safetensors.torch import save

    stem = out[: -len(".safetensors")] if out.endswith(".safetensors") else os.path.splitext(out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in official_state_dict(model).items()}
    payload_meta = dict(meta)
    if model.router is not None and not _masks_match_config(model):
        payload_meta["router_masks"] = model.router.masks.cpu()  # adopted masks: not derivable
    pt, st = stem + ".pt", stem + ".safetensors"
    atomic_write(pt, lambda f: torch.save({"ema": sd, "dtr_scale": payload_meta}, f))
    atomic_write_bytes(st, save(sd, metadata={k: json.dumps(v) for k, v in meta.items()}))
    return pt, st


def _masks_match_config(model: DiT) -> bool:
    from .models.routing import TaskRouter

    rebuilt = TaskRouter(model.routing, model.hidden_size, model.depth).masks
    return torch.equal(rebuilt, model.router.masks.cpu())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dtr_scale.export", description="Export consolidated EMA weights (official DiT layout) from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="run directory (uses 'latest') or a step_* directory")
    p.add_argument("--out", required=True, help="output path; writes STEM.pt and STEM.safetensors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_threads()  # before any tensor work: see dtr_scale/threads.py
    try:
        pt, st = export(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported EMA weights: {pt} and {st}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
