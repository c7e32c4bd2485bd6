"""Every random draw of training and sampling, and the seeds they come from.

Two families of generators:

- Per rank (`rank_streams`): the streaming data modes (resampled | epoch) draw each micro-batch's
  timesteps and noise from two generators per rank, and label dropout from torch's global
  generator. Their draws depend on the world size, as the streaming data order does. Exact resume
  restores their states; a resume on another world size reseeds them from the step.
- Per sample (`derive_seed`): `data.mode=global` draws everything about global position p (the
  flip and the moments' ε in the loader; the timestep, label dropout and noise in the loop) from
  generators seeded by (seed, p, purpose), and the sampler draws sample i's label and noise from a
  generator seeded by (seed, i). These draws do not depend on the rank, the batch or the world size.

`derive_seed` is the one derivation of per-sample seeds: integers folded one after another through
SplitMix64's finaliser (Steele et al. 2014), a bijection on 64-bit integers that scatters
neighbouring inputs. The per-rank family keeps its older linear formula, so that runs and
checkpoints made before this module keep their exact draws.
"""
from __future__ import annotations

from typing import Sequence

import torch

MASK64 = (1 << 64) - 1
# Purposes kept apart in the per-position seeds of data.mode=global.
ORDER_TAG, LOAD_TAG, TRAIN_TAG = 404, 505, 606


def splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def derive_seed(*parts: int) -> int:
    """A 64-bit seed from integers, each folded in by the mixer. Pure integer arithmetic: ~15x
    cheaper than numpy's SeedSequence, which matters at one call per sample."""
    h = 0
    for p in parts:
        h = splitmix64(h ^ (int(p) & MASK64))
    return h


# ---------------------------------------------------------------------------- training draws
def rank_streams(seed: int, rank: int, step: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """Per-rank generators for timesteps and noise (returned), and the global stream that label
    dropout draws from (seeded). `step` > 0 reseeds them for a resume on another world size."""
    base = seed + 1_000_003 * step
    torch.manual_seed(base * 31 + rank)
    return (torch.Generator().manual_seed(base * 7919 + rank),
            torch.Generator().manual_seed(base * 104729 + rank))


def position_generator(seed: int, position: int, tag: int) -> torch.Generator:
    """The generator of one global position's draws for one purpose (torch's: cheap to create)."""
    return torch.Generator().manual_seed(derive_seed(seed, position, tag))


class RankDraws:
    """A micro-batch's draws from the rank's two streams: all timesteps, then all noise; label
    dropout is left to the DiT (torch's global stream)."""
    per_sample = False

    def __init__(self, gen_t: torch.Generator, gen_noise: torch.Generator):
        self.gen_t, self.gen_noise = gen_t, gen_noise

    def draw(self, batch_size: int, sample_shape, timesteps, drop_prob: float):
        """(t, noise, None); `timesteps(n, generator)` is the objective's time distribution."""
        t = timesteps(batch_size, self.gen_t)
        return t, torch.randn((batch_size, *sample_shape), generator=self.gen_noise), None


class PositionDraws:
    """A micro-batch's draws, each sample from its own generator seeded by (seed, position):
    its timestep, then its label-dropout decision, then its noise."""
    per_sample = True

    def __init__(self, seed: int, positions: torch.Tensor):
        self.seed, self.positions = seed, positions

    def draw(self, batch_size: int, sample_shape, timesteps, drop_prob: float):
        if batch_size != len(self.positions):
            raise ValueError(f"{len(self.positions)} positions for a batch of {batch_size}")
        ts, noises, drops = [], [], []
        for pos in self.positions.tolist():
            g = position_generator(self.seed, pos, TRAIN_TAG)
            ts.append(timesteps(1, g))
            drops.append(torch.rand(1, generator=g) < drop_prob)
            noises.append(torch.randn(tuple(sample_shape), generator=g))
        return torch.cat(ts), torch.stack(noises), torch.cat(drops)


def training_inputs(objective, batch, gen_t: torch.Generator, gen_noise: torch.Generator, seed: int,
                    device: torch.device):
    """(x, y, t, noise, drop, images) on `device` for one loader micro-batch (drop None: the DiT
    draws it; images None unless the loader yields the clean images, for REPA).
    `data.mode=global` batches carry their global positions; the others are (x, y[, images])."""
    x, y = batch[0], batch[1]
    positions = getattr(batch, "positions", None)
    images = getattr(batch, "images", None) if positions is not None else (batch[2] if len(batch) > 2 else None)
    draws = RankDraws(gen_t, gen_noise) if positions is None else PositionDraws(seed, positions)
    t, noise, drop = objective.draw_inputs(x, draws)
    return tuple(v if v is None else v.to(device, non_blocking=True) for v in (x, y, t, noise, drop, images))


# ---------------------------------------------------------------------------- sampling draws
# Sample i owns a CPU generator seeded with `sample_seed(seed, i)`. Draw order inside it is fixed:
# the uniform class label, then x_T, then one draw per sampler step that adds noise (DDPM every step
# but the last; DDIM only when eta > 0; the flow SDE every step). No draw is shared between
# samples, so the images cannot depend on batch size, batch order or the number of ranks. Noise is
# drawn on the CPU and moved, so the random inputs are also the same on CPU and GPU.

def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample `index` under run seed `seed`: (seed, index) packed into one
    64-bit word and mixed, so distinct pairs never share a noise stream (the mix is a bijection)."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if not 0 <= index < 2**32:
        raise ValueError(f"sample index must be in [0, 2**32), got {index}")
    return derive_seed((seed << 32) | index)


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
    """`noise_fn` for the samplers: row r of every draw comes from generator r."""

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
