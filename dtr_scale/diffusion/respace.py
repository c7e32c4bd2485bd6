"""Timestep respacing: run a process on a subset of the original timesteps.

For kept original timesteps τ_1 < ... < τ_S the respaced process keeps ᾱ exactly at each kept
step and recomputes β_i = 1 - ᾱ_{τ_i} / ᾱ_{τ_{i-1}} (Nichol & Dhariwal 2021, §4).

The model is always called with ORIGINAL timesteps (long integers 0..T-1, not rescaled): DTR
routes each sample by its original timestep (task index), and DiT's timestep embedding was
trained on those values.
"""

from __future__ import annotations

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """Original timesteps to keep.

    section_counts:
      - "" or None: all timesteps (no respacing);
      - "ddimN": the stride i with len(range(0, T, i)) == N (DDIM's even stride; keeps 0);
      - "N" or an int: N steps spread evenly over [0, T-1] (both ends kept when N > 1);
      - "a,b,c" or a list: T split into len(list) equal sections, with a, b, c steps spread
        evenly inside each.
    """
    if section_counts is None or (isinstance(section_counts, str) and section_counts.strip() == ""):
        return set(range(num_timesteps))
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            return _ddim_stride(num_timesteps, text)
        try:
            section_counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(
                f"timestep_respacing={section_counts!r} is not understood; use '' (no respacing), "
                "an int such as '250', 'ddimN' such as 'ddim50', or a section list such as '10,15,20'"
            ) from None
    elif isinstance(section_counts, (int, np.integer)):
        section_counts = [int(section_counts)]
    else:
        section_counts = [int(c) for c in section_counts]
    if not section_counts or any(c < 1 for c in section_counts):
        raise ValueError(f"timestep_respacing section counts must be positive, got {section_counts}")
    if len(section_counts) > num_timesteps:
        raise ValueError(
            f"timestep_respacing has {len(section_counts)} sections for only {num_timesteps} steps"
        )

    base, extra = divmod(num_timesteps, len(section_counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(section_counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"timestep_respacing asks for {count} steps in a section of {size} timesteps "
                f"(section {i} of {section_counts}, {num_timesteps} diffusion steps)"
            )
        # Evenly spaced positions from the first to the last timestep of the section.
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        kept.extend(start + round(j * stride) for j in range(count))
        start += size
    return set(kept)


def _ddim_stride(num_timesteps: int, text: str) -> set[int]:
    try:
        desired = int(text[len("ddim"):])
    except ValueError:
        raise ValueError(f"timestep_respacing={text!r}: expected 'ddimN' with an integer N") from None
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
            return set(range(0, num_timesteps, stride))
    if desired == 1:
        return {0}
    raise ValueError(
        f"timestep_respacing={text!r}: no integer stride gives exactly {desired} of "
        f"{num_timesteps} steps; pick another count or use a plain count such as '{desired}'"
    )


class _TimestepMappedModel:
    """Calls the wrapped model with original timesteps instead of respaced indices."""

    def __init__(self, model, timestep_map: np.ndarray):
        self.model = model
        self.timestep_map = timestep_map
        self._maps: dict = {}

    def __call__(self, x, ts, **kwargs):
        table = self._maps.get(ts.device)
        if table is None:
            table = torch.from_numpy(self.timestep_map).to(device=ts.device, dtype=torch.long)
            self._maps[ts.device] = table
        return self.model(x, table[ts.long()], **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """GaussianDiffusion over the kept timesteps ``use_timesteps`` of a base β schedule."""

    def __init__(self, use_timesteps, betas, **kwargs):
        base_betas = np.asarray(betas, dtype=np.float64)
        self.original_num_steps = int(base_betas.shape[0])
        kept = sorted(int(t) for t in use_timesteps)
        if not kept or kept[0] < 0 or kept[-1] >= self.original_num_steps:
            raise ValueError(
                f"use_timesteps must be a non-empty subset of 0..{self.original_num_steps - 1}"
            )
        self.use_timesteps = set(kept)
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        new_betas = []
        last = 1.0
        for t in kept:
            new_betas.append(1.0 - base_alphas_cumprod[t] / last)
            last = base_alphas_cumprod[t]
        self.timestep_map = np.asarray(kept, dtype=np.int64)
        super().__init__(np.asarray(new_betas, dtype=np.float64), **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _TimestepMappedModel):
            return model
        return _TimestepMappedModel(model, self.timestep_map)
