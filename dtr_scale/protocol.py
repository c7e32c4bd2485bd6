"""The protocol of a metric: what produced the samples and how they were scored.

A FID means little without its protocol (how many samples, which sampler and how many network
evaluations, the guidance, how labels were drawn, which weights, which reference and extractor,
which code). `python -m dtr_scale.sample` writes the sampling half as a JSON sidecar beside
`samples.npz` (`samples.protocol.json`); `python -m dtr_scale.evaluate` reads it, adds the
evaluation half and writes both into its report, and the in-loop FID record carries the same
fields. Samples without a sidecar still evaluate: their sampling fields read "unknown".

NFE counts denoiser calls per sample, measured while sampling; a guided call evaluates the
network on a doubled batch (conditional + unconditional) and still counts once, as "DDPM 250"
does in the DiT and ADM papers.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from .atomic import atomic_write_json

FORMAT = 1
SIDECAR_SUFFIX = ".protocol.json"
UNKNOWN = "unknown"
# The sampling half: every key is present, "unknown" where a sample set came without a sidecar.
SAMPLE_KEYS = ("num_samples", "objective", "sampler", "steps", "nfe", "cfg_scale", "cfg_channels",
               "guidance_interval", "labels", "num_classes", "seed", "precision", "vae", "weights")


def sidecar_path(samples: str) -> str:
    """`DIR/samples.npz` -> `DIR/samples.protocol.json`; a folder of samples -> `DIR/samples.protocol.json`."""
    if os.path.isdir(samples):
        return os.path.join(samples, "samples" + SIDECAR_SUFFIX)
    root, ext = os.path.splitext(samples)
    return (root if ext == ".npz" else samples) + SIDECAR_SUFFIX


def write_sample_protocol(samples_npz: str, record: dict) -> str:
    path = sidecar_path(samples_npz)
    atomic_write_json(path, {"format": FORMAT, **record})
    return path


def read_sample_protocol(samples: str) -> dict:
    """The sampling half for a sample set; every SAMPLE_KEYS field "unknown" without a sidecar."""
    path = sidecar_path(samples)
    if not os.path.isfile(path):
        return {**{k: UNKNOWN for k in SAMPLE_KEYS}, "sidecar": None, "code": UNKNOWN}
    with open(path) as f:
        record = json.load(f)  # plain JSON: reading it runs nothing
    if not isinstance(record, dict):
        return {**{k: UNKNOWN for k in SAMPLE_KEYS}, "sidecar": path, "code": UNKNOWN}
    return {**{k: UNKNOWN for k in SAMPLE_KEYS}, **record, "sidecar": path}


def state_sha256(state_dict: dict) -> str:
    """sha256 of a state dict's tensors (sorted names, dtype, shape, bytes): the identity of weights
    that do not come from one file (a training checkpoint's EMA, the in-loop EMA copy)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def nfe_per_sample(counts: dict) -> float | int | None:
    """Mean denoiser calls per batch (each call evaluates every sample of its batch once)."""
    if not counts.get("batches"):
        return None
    mean = counts["denoiser_calls"] / counts["batches"]
    return int(mean) if float(mean).is_integer() else round(mean, 2)


def reference_name(path: str) -> str:
    """`.../VIRTUAL_imagenet256_labeled.npz` -> `VIRTUAL_imagenet256_labeled`; a folder: its name."""
    base = os.path.basename(os.path.normpath(path))
    return base[:-4] if base.endswith(".npz") else base


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def describe_sampler(p: dict) -> str:
    """`DDPM 250`, `DDIM 50`, `flow ode dopri5 NFE 183` (the objective's label, then the NFE), or
    `sampler unknown`."""
    sampler, nfe = p.get("sampler"), p.get("nfe")
    if sampler in (None, UNKNOWN):
        return "sampler unknown"
    count = nfe if nfe not in (None, UNKNOWN) else p.get("steps")
    return f"{p.get('label', sampler)} {count}"


def summary_line(metrics: dict, protocol: dict) -> str:
    """`FID 2.27 sFID 4.60 IS 278 P 0.83 R 0.57 | 50000 samples, DDPM 250, CFG 1.5 (3 ch), labels
    uniform, EMA step 400000, ref VIRTUAL_imagenet256_labeled (sha256 1a2b3c4d…)`."""
    m, p = metrics, protocol
    head = (f"FID {_fmt(m.get('fid'), '.2f')} sFID {_fmt(m.get('sfid'), '.2f')} "
            f"IS {_fmt(m.get('inception_score'), '.1f')} P {_fmt(m.get('precision'), '.2f')} "
            f"R {_fmt(m.get('recall'), '.2f')}")
    cfg = p.get("cfg_scale")
    if cfg == UNKNOWN:
        guidance = "CFG unknown"
    else:
        channels = p.get("cfg_channels")
        guidance = f"CFG {cfg} ({'all' if channels is None else channels} ch)"
        interval = p.get("guidance_interval")
        if isinstance(interval, (list, tuple)) and tuple(interval) != (0.0, 1.0):
            guidance += f" in t [{interval[0]}, {interval[1]}]"
    w = p.get("weights")
    if isinstance(w, dict):
        kind = "EMA" if w.get("ema") is True else "weights (EMA unknown)"
        weights = f"{kind} step {w.get('step') if w.get('step') is not None else 'unknown'}"
    else:
        weights = "weights unknown"
    ref = p.get("reference") or {}
    sha = ref.get("sha256")
    ref_text = f"ref {ref.get('name', UNKNOWN)} (sha256 {sha[:12] + '…' if sha else 'unknown'})"
    parts = [f"{p.get('evaluated_samples', p.get('num_samples'))} samples", describe_sampler(p), guidance,
             f"labels {p.get('labels')}", weights, ref_text]
    return f"{head} | {', '.join(str(x) for x in parts)}"


def join(sample_half: dict, *, evaluated: int, ref_path: str, ref_sha256: str | None,
         extractor_identity: dict, code: dict) -> dict:
    """A report's protocol: the sampling half plus how the samples were scored. `code` names the
    code of this step ({"evaluate": ...} or {"train": ...}); the sampling half's code is kept."""
    half = dict(sample_half)
    sample_code = half.pop("code", UNKNOWN)
    return {**half, "evaluated_samples": evaluated,
            "reference": {"name": reference_name(ref_path), "sha256": ref_sha256, "path": os.path.abspath(ref_path)},
            "extractor": {"name": extractor_identity.get("name"),
                          # None: an extractor without weights (pixels)
                          "weights_sha256": extractor_identity.get("weights_sha256")},
            "code": {"sample": sample_code, **code}}
