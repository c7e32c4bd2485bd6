"""Sampling a list of sample indices: the function the CLI and the training loop both call.

    images, labels = generate(model, diffusion, range(64), seed=0, cfg_scale=4.0,
                              labels="balanced", decoder=PixelDecoder(), batch_size=16)

`diffusion` is any objective's sampler: `create_diffusion(...)` (DDPM, sampler=ddpm|ddim) or a
`FlowSolver` (flow matching: SiT's ODE/SDE; `sampler` and `eta` are then unused); all offer
`sample(denoiser, shape, y=, noise_fn=, device=, sampler=, eta=)`. Sample i depends only on
(seed, i) (see randomness.py), so a training run's sample grid at step k and the CLI's samples from
the exported weights of step k show the same images for the same seed.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .decode import PixelDecoder, to_uint8
from ..randomness import PerSampleNoise, draw_labels, sample_generators
from .guidance import GuidedDenoiser

SAMPLERS = ("ddpm", "ddim")


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def sample_latents(model, diffusion, indices: Sequence[int], *, seed: int,
                   labels: str | Sequence[int] | torch.Tensor = "uniform", cfg_scale: float = 1.0,
                   cfg_channels: int | None = None, sampler: str = "ddpm", eta: float = 0.0,
                   precision: str = "fp32", device: torch.device | None = None,
                   denoiser: GuidedDenoiser | None = None,
                   guidance_interval: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: (latents (n, C, H, W) fp32 on `device`, labels (n,) int64 on the CPU).

    `labels` is "uniform", "balanced" or explicit per-index labels (the label draw is still made
    so the noise of sample i is the same whatever its label). The model must be in eval mode
    (train mode would drop labels at random); `generate` takes care of that. A prebuilt
    `denoiser` (reused across batches) replaces cfg_scale / cfg_channels / precision /
    guidance_interval.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: expected one of {', '.join(SAMPLERS)}")
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("sample_latents needs at least one index")
    device = device or _model_device(model)
    generators = sample_generators(seed, indices)
    mode = labels if isinstance(labels, str) else "uniform"
    y = draw_labels(generators, indices, model.num_classes, mode)
    if not isinstance(labels, str):
        y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if y.numel() != len(indices):
            raise ValueError(f"{y.numel()} labels given for {len(indices)} indices")
        if y.min() < 0 or y.max() >= model.num_classes:
            raise ValueError(f"labels must lie in [0, {model.num_classes}), got {y.tolist()}")
    denoiser = denoiser or GuidedDenoiser(model, cfg_scale=cfg_scale, cfg_channels=cfg_channels,
                                          precision=precision, guidance_interval=guidance_interval)
    shape = (len(indices), model.in_channels, model.input_size, model.input_size)
    z = diffusion.sample(denoiser, shape, y=y.to(device), noise_fn=PerSampleNoise(generators), device=device,
                         sampler=sampler, eta=eta)
    return z, y


def batches(indices: Sequence[int], batch_size: int) -> Iterable[list[int]]:
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


@torch.no_grad()
def generate(model, diffusion, indices: Sequence[int], *, seed: int,
             labels: str | Sequence[int] | torch.Tensor = "uniform", cfg_scale: float = 1.0,
             cfg_channels: int | None = None, sampler: str = "ddpm", eta: float = 0.0,
             precision: str = "fp32", batch_size: int | None = None,
             decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
             device: torch.device | None = None, guidance_interval: tuple[float, float] = (0.0, 1.0),
             on_batch: Callable[[int], None] | None = None,
             counts: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, H, W, C) and int64 labels (n,) for `indices`, in that order.

    `decoder` maps latents to [-1, 1] images (default: pixel mode). `batch_size` bounds the model
    batch (the guided model call is twice that). `on_batch(n)` is called after each batch (a
    progress bar hook). `counts`, if given, gets `batches` and `denoiser_calls` added to (the
    protocol's NFE: calls per batch). The model's train/eval mode is restored afterwards.
    """
    indices = [int(i) for i in indices]
    batch_size = batch_size or len(indices) or 1
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    explicit = None if isinstance(labels, str) else torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if explicit is not None and explicit.numel() != len(indices):
        raise ValueError(f"{explicit.numel()} labels given for {len(indices)} indices")
    decoder = decoder or PixelDecoder()
    was_training = model.training
    model.eval()
    try:
        denoiser = GuidedDenoiser(model, cfg_scale=cfg_scale, cfg_channels=cfg_channels, precision=precision,
                                  guidance_interval=guidance_interval)
        images, out_labels, done = [], [], 0
        for chunk in batches(indices, batch_size):
            chunk_labels = labels if explicit is None else explicit[done:done + len(chunk)]
            z, y = sample_latents(model, diffusion, chunk, seed=seed, labels=chunk_labels, sampler=sampler,
                                  eta=eta, device=device, denoiser=denoiser)
            if counts is not None:
                counts["batches"] = counts.get("batches", 0) + 1
                counts["denoiser_calls"] = counts.get("denoiser_calls", 0) + denoiser.calls
                denoiser.calls = 0
            images.append(to_uint8(decoder(z)))
            out_labels.append(y.numpy())
            done += len(chunk)
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.train(was_training)
    return np.concatenate(images), np.concatenate(out_labels).astype(np.int64)
