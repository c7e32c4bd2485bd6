"""The denoiser the samplers call: the DiT, optionally with classifier-free guidance and bf16.

With guidance (cfg_scale != 1) DiT's reference script doubles the *sampler state* ([z; z] with
labels [y; null]) and throws the second half away at the end; that half's trajectory is never
read (forward_with_cfg only looks at the first half). Here the sampler state stays at B rows and
only the model call is doubled, which gives the first half's result exactly and halves the
sampler's arithmetic and random draws. The learned variance comes from the conditional half, as
in DiT.

A guidance interval [low, high] (flow time, t = 0 noise, t = 1 data; Kynkäänniemi et al. 2024)
applies guidance only to rows whose t lies inside it; the others get the plain conditional
output, without a doubled batch when no row of the call is inside. [0, 1] is plain CFG.
"""
from __future__ import annotations

import contextlib

import torch

from dtr_scale.errors import UserError

PRECISIONS = ("fp32", "bf16")


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast around the model only; the diffusion arithmetic stays fp32.

    On CPU bf16 is allowed (torch's CPU autocast), but it is a numerics check, not a speed-up.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class GuidedDenoiser:
    """Callable `(x, t, y) -> model output` for `p_sample_loop` / `ddim_sample_loop`."""

    def __init__(self, model, *, cfg_scale: float = 1.0, cfg_channels: int | None = None,
                 precision: str = "fp32", null_label: int | None = None,
                 guidance_interval: tuple[float, float] = (0.0, 1.0)):
        if cfg_scale < 0:
            raise UserError(f"cfg_scale must be >= 0 (1.0 = no guidance), got {cfg_scale}")
        in_channels = getattr(model, "in_channels", None)
        if cfg_channels is not None and in_channels is not None and not 1 <= cfg_channels <= in_channels:
            raise UserError(f"cfg_channels={cfg_channels}: expected 1..{in_channels} (the model's "
                             "latent channels) or unset for all channels")
        self.model, self.cfg_scale, self.cfg_channels = model, float(cfg_scale), cfg_channels
        self.precision = precision
        low, high = guidance_interval
        if not 0.0 <= low <= high <= 1.0:
            raise UserError(f"guidance interval [{low}, {high}]: expected 0 <= low <= high <= 1")
        self.interval = (float(low), float(high))
        self.null_label = model.num_classes if null_label is None else null_label
        self.device = next(model.parameters()).device
        self.calls = 0  # sampler steps that called the network (the protocol's NFE, see protocol.py)
        autocast_context(precision, self.device)  # validate now, not at the first step

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        with autocast_context(self.precision, x.device):
            inside = self._inside(t)
            if not self.guided or not bool(inside.any()):  # scale 1 (or outside): the conditional output
                return self.model(x, t, y).float()
            null = torch.full_like(y, self.null_label)
            out = self.model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]),
                                              self.cfg_scale, self.cfg_channels)
            out = out[: x.shape[0]].float()
            if bool(inside.all()):
                return out
            plain = self.model(x, t, y).float()
        return torch.where(inside.reshape(-1, *([1] * (out.dim() - 1))), out, plain)

    def _inside(self, t: torch.Tensor) -> torch.Tensor:
        if self.interval == (0.0, 1.0):  # the default: no comparison, so integer DDPM t works too
            return torch.ones(t.shape[0], dtype=torch.bool, device=t.device)
        low, high = self.interval
        return (t >= low) & (t <= high)
