"""Respacing: which timesteps are kept, ᾱ preserved, and the model sees ORIGINAL timesteps."""

import numpy as np
import pytest
import torch

from dtr_scale.diffusion import create_diffusion, space_timesteps

torch.set_num_threads(1)


class Recorder:
    """Stand-in network that records the timesteps it is called with."""

    def __init__(self, learn_sigma=True):
        self.calls = []
        self.learn_sigma = learn_sigma

    def __call__(self, x, t):
        self.calls.append(t.clone())
        eps = 0.1 * x
        return torch.cat([eps, torch.zeros_like(x)], 1) if self.learn_sigma else eps


def test_space_timesteps_variants():
    assert space_timesteps(1000, "") == set(range(1000))
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim1000") == set(range(1000))
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and min(kept) == 0 and max(kept) == 999
    gaps = np.diff(sorted(kept))
    assert gaps.min() >= 4 and gaps.max() <= 5  # even spread of 999/249 ≈ 4.01
    assert space_timesteps(1000, 250) == kept

    sections = space_timesteps(1000, "10,15,20")
    assert len(sections) == 45
    edges = [(0, 334), (334, 667), (667, 1000)]  # 1000 = 334 + 333 + 333
    for (lo, hi), count in zip(edges, [10, 15, 20]):
        inside = sorted(t for t in sections if lo <= t < hi)
        assert len(inside) == count and inside[0] == lo and inside[-1] == hi - 1


@pytest.mark.parametrize("bad", ["ddim0", "ddim2000", "0", "1,0", "x,y", "1500"])
def test_bad_spacing_raises(bad):
    with pytest.raises(ValueError, match="timestep_respacing"):
        space_timesteps(1000, bad)


@pytest.mark.parametrize("spacing", ["250", "ddim50", "10,15,20"])
def test_spaced_process_keeps_alpha_bar(spacing):
    base = create_diffusion("")
    d = create_diffusion(spacing)
    kept = sorted(space_timesteps(1000, spacing))
    assert d.num_timesteps == len(kept)
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-10)
    # q_sample at spaced index i is the base q_sample at the original timestep.
    x0 = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    noise = torch.randn_like(x0)
    idx = torch.tensor([0, len(kept) // 2, len(kept) - 1])
    orig = torch.tensor([kept[i] for i in idx.tolist()])
    torch.testing.assert_close(d.q_sample(x0, idx, noise), base.q_sample(x0, orig, noise))


@pytest.mark.parametrize("spacing", ["250", "ddim50", "10,15,20"])
@pytest.mark.parametrize("sampler", ["p_sample_loop", "ddim_sample_loop"])
def test_samplers_call_model_with_original_timesteps(spacing, sampler):
    d = create_diffusion(spacing)
    model = Recorder()
    getattr(d, sampler)(model, (2, 1, 2, 2))
    kept = sorted(space_timesteps(1000, spacing), reverse=True)
    assert len(model.calls) == len(kept)
    for t, expected in zip(model.calls, kept):
        assert t.dtype == torch.long and t.shape == (2,)
        assert t.tolist() == [expected, expected]
    assert model.calls[0][0].item() == max(kept)
    assert {c[0].item() for c in model.calls} == set(kept)
    if spacing == "250":
        assert model.calls[0][0].item() == 999


def test_training_losses_pass_original_timesteps():
    d = create_diffusion("ddim50")
    model = Recorder()
    d.training_losses(model, torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 49]))
    # The first call is the real forward; the VB term re-uses that output (frozen).
    assert model.calls[0].tolist() == [0, 20, 980]
    assert all(c.dtype == torch.long for c in model.calls)


def test_unspaced_process_passes_timesteps_unchanged():
    d = create_diffusion("", diffusion_steps=50)
    model = Recorder(learn_sigma=True)
    d.p_sample_loop(model, (1, 1, 1, 1))
    assert [c.item() for c in model.calls] == list(range(49, -1, -1))
