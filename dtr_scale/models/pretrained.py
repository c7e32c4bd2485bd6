"""Loading weights: official DiT checkpoints, official DTR checkpoints and our own exports.

Official DiT/our weights share one key layout (`x_embedder.proj`, `blocks.N.attn.qkv`, ...).
Official DTR checkpoints add `blocks.N.routing._unit_mapping` (T×C float masks, one per block):
we compare them with the model's own masks and adopt them when they differ (the reference's
random R-TR masks are unseeded, so only the checkpoint knows them). Our own checkpoints carry the
masks as `router.masks`. Every mismatch is reported with the key names, never silently ignored.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping

import torch

from ..errors import UserError
from .dit import DiT

log = logging.getLogger(__name__)

_DTR_KEY = re.compile(r"^blocks\.(\d+)\.routing\._unit_mapping$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_forward_module.")
EXPORT_FORMAT = "dtr-scale-weights/1"


def read_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a `.pt`/`.pth`/`.safetensors` file -> (state_dict, metadata).

    Accepts a bare state dict, DiT's training checkpoints ({"model", "ema", ...}: the EMA weights
    are taken, as DiT's own sampler does) and our exports ({"ema", "dtr_scale": metadata}, see
    dtr_scale/export.py).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
        return sd, {k: _maybe_json(v) for k, v in meta.items()}
    # weights_only: a weights file must never be able to run code on load.
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "ema" in obj and isinstance(obj["ema"], Mapping):
        return dict(obj["ema"]), dict(obj.get("dtr_scale", {}))  # ours carry metadata beside "ema"
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        return dict(obj["model"]), {}
    if isinstance(obj, Mapping):
        return dict(obj), {}
    raise UserError(f"{path}: expected a state dict, got {type(obj).__name__}")


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def official_state_dict(model: DiT) -> dict[str, torch.Tensor]:
    """The model's weights in the official DiT layout (no routing buffers): what the official
    sampling script loads strictly. The routing config travels in the export's metadata."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("router.")}


def load_pretrained(model: DiT, state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike) -> DiT:
    """Load official DiT / official DTR / dtr-scale weights into `model` (strictly).

    Raises ValueError naming missing, unexpected and wrongly shaped keys.
    """
    meta: dict = {}
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        sd, meta = read_weights_file(state_dict_or_path)
        source = os.fspath(state_dict_or_path)
    else:
        sd, source = dict(state_dict_or_path), "state dict"
    sd = _strip_wrappers(sd)

    dtr_tables = {int(m.group(1)): sd.pop(k) for k in list(sd) if (m := _DTR_KEY.match(k))}
    if dtr_tables:
        _apply_dtr_tables(model, dtr_tables, source)
    if meta.get("router_masks") is not None and "router.masks" not in sd:
        sd["router.masks"] = meta["router_masks"]  # masks adopted during training, kept by export

    masks = sd.pop("router.masks", None)  # our own checkpoints and exports
    if masks is not None:
        if model.router is None:
            raise UserError(
                f"{source}: weights carry DTR routing masks (router.masks) but the model has no "
                "routing; build it with routing=RoutingConfig(...) matching the checkpoint"
            )
        T, C = model.router.config.num_tasks, model.hidden_size
        if masks.dim() != 3 or masks.shape[0] not in (1, model.depth) or tuple(masks.shape[1:]) != (T, C):
            raise UserError(
                f"{source}: router.masks has shape {tuple(masks.shape)}, expected (1 or {model.depth}, {T}, {C})"
            )
        model.router.adopt(masks.expand(model.depth, -1, -1))
    if model.router is not None:
        sd["router.masks"] = model.router.masks  # official DiT weights: masks come from the config
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches: {_short(wrong_shape)}")
        raise UserError(
            f"{source} does not fit this model ({type(model).__name__} depth={model.depth}, "
            f"hidden={model.hidden_size}, patch={model.patch_size}, input={model.input_size}, "
            f"classes={model.num_classes}, learn_sigma={model.learn_sigma}): " + "; ".join(parts)
        )
    model.load_state_dict(sd, strict=True)
    return model


def _apply_dtr_tables(model: DiT, tables: dict[int, torch.Tensor], source: str) -> None:
    """Verify official DTR `_unit_mapping` masks against the model's; adopt them if they differ."""
    if model.router is None:
        _accept_plain_dit_tables(model, tables, source)
        return
    missing = [i for i in range(model.depth) if i not in tables]
    extra = [i for i in tables if i >= model.depth]
    if missing or extra:
        raise UserError(
            f"{source}: DTR routing masks for blocks {extra} do not exist in the model and blocks "
            f"{missing} have none (keys blocks.N.routing._unit_mapping)"
        )
    ours = model.router.block_tables()
    stacked = torch.stack([tables[i] for i in range(model.depth)])
    if stacked.shape != ours.shape:
        raise UserError(
            f"{source}: blocks.0.routing._unit_mapping has shape {tuple(stacked.shape[1:])}, "
            f"the model's masks are {tuple(ours.shape[1:])} (num_tasks × hidden_size)"
        )
    if torch.equal((stacked != 0).to(ours.dtype), ours.cpu()):
        log.info("%s: DTR routing masks verified against the model's own", source)
        return
    log.warning("%s: DTR routing masks differ from the model's config; adopting the checkpoint's", source)
    model.router.adopt(stacked)


def _accept_plain_dit_tables(model: DiT, tables: dict[int, torch.Tensor], source: str) -> None:
    """A plain DiT (routing=None, β = 1) takes a DTR checkpoint only if its masks route nothing.

    The reference code keeps its masks even at sharing_ratio = 1.0, where every mask is all ones:
    such a checkpoint is a plain DiT, and the masks are dropped. Any zero in a mask means the
    weights were trained routed, and running them unrouted would silently change the model.
    """
    def keys(blocks: list[int]) -> str:
        return _short([f"blocks.{i}.routing._unit_mapping" for i in sorted(blocks)])

    beyond = [i for i in tables if i >= model.depth]
    if beyond:
        raise UserError(f"{source}: {keys(beyond)} name blocks the model (depth {model.depth}) does not have")
    routed = [i for i, table in tables.items() if not bool((table != 0).all())]
    if routed:
        raise UserError(
            f"{source}: checkpoint routes channels ({keys(routed)} are not all ones) but the model was "
            "built without routing; pass routing=RoutingConfig(sharing_ratio=..., init=...) matching it"
        )
    log.info("%s: DTR masks are all ones (sharing_ratio 1.0): loading as a plain DiT", source)


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_weights(path: str | os.PathLike, **overrides: Any) -> tuple[DiT, dict[str, Any]]:
    """Rebuild a model from one of our exports (its metadata names the architecture and the
    routing) and load the weights. Returns (model in eval mode, metadata)."""
    from .dit import create_model
    from .routing import RoutingConfig

    sd, meta = read_weights_file(path)
    if "model" not in meta:
        raise UserError(
            f"{path}: no dtr-scale metadata (an official DiT/DTR checkpoint?); build the model with "
            "create_model(...) and call load_pretrained(model, path) instead"
        )
    from .block_options import BLOCK_KEYS, BlockOptions

    kwargs = dict(meta["model"])
    name = kwargs.pop("name")
    kwargs["block"] = BlockOptions(**{k: kwargs.pop(k) for k in BLOCK_KEYS if k in kwargs})
    routing = RoutingConfig(**meta["routing"]) if meta.get("routing") else None
    kwargs.update(overrides)
    model = create_model(name, routing=routing, **kwargs)
    load_pretrained(model, path)
    return model.eval(), meta
