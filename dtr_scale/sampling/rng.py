"""Per-sample randomness: sample i's label, x_T and every step's noise depend only on (seed, i).

Each sample owns a CPU `torch.Generator` seeded with `sample_seed(seed, i)`. Draw order inside
one generator is fixed: first the uniform class label, then x_T, then one draw per sampler step
that adds noise (DDPM every step but the last; DDIM only when eta > 0). Because no draw is ever
shared between samples, the images cannot depend on batch size, batch order or the number of
ranks. Noise is drawn on the CPU and moved to the device, so the random inputs are also the same
on CPU and GPU (the model's float results are not bit-identical across devices, of course).
"""
from __future__ import annotations

from typing import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014): a bijection on 64-bit ints that scatters
    neighbouring inputs, so generators for consecutive indices start far apart."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_seed(seed: int, index: int) -> int:
    """The 64-bit generator seed of sample `index` under run seed `seed`.

    (seed, index) is packed into one 64-bit word before mixing, so distinct pairs always give
    distinct seeds (the mix is a bijection): two samples never share a noise stream.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if not 0 <= index < 2**32:
        raise ValueError(f"sample index must be in [0, 2**32), got {index}")
    return _splitmix64((seed << 32) | index)


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(sample_seed(seed, int(i))) for i in indices]


def draw_labels(generators: Sequence[torch.Generator], indices: Sequence[int], num_classes: int,
                mode: str = "uniform") -> torch.Tensor:
    """Class labels, one draw from each sample's generator (the first draw of its stream).

    `uniform`: that draw, i.e. labels uniform at random as DiT/DTR sample them.
    `balanced`: `index % num_classes` (the draw is still made and discarded, so that a sample's
    noise is the same in both modes and only its label differs).
    """
    if mode not in ("uniform", "balanced"):
        raise ValueError(f"labels={mode!r}: expected 'uniform' or 'balanced'")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    drawn = [int(torch.randint(num_classes, (1,), generator=g)) for g in generators]
    if mode == "balanced":
        drawn = [int(i) % num_classes for i in indices]
    return torch.tensor(drawn, dtype=torch.long)


class PerSampleNoise:
    """`noise_fn` for the diffusion samplers: row r of every draw comes from generator r."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"noise requested for a batch of {like.shape[0]} rows but "
                             f"{len(self.generators)} per-sample generators were given")
        rows = [torch.randn(tuple(like.shape[1:]), generator=g) for g in self.generators]
        out = torch.stack(rows)
        if like.device.type == "cuda":
            out = out.pin_memory().to(like.device, non_blocking=True)
        return out.to(device=like.device, dtype=like.dtype)
