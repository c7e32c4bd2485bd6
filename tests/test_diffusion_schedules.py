"""β schedules: linear endpoints and scaling, cosine shape, ᾱ monotone."""

import math

import numpy as np
import pytest

from dtr_scale.diffusion import create_diffusion
from dtr_scale.diffusion.schedules import cosine_betas, get_named_beta_schedule, linear_betas


def test_linear_endpoints_and_even_spacing():
    betas = linear_betas(1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02, rel=1e-12)
    steps = np.diff(betas)
    np.testing.assert_allclose(steps, (0.02 - 1e-4) / 999, rtol=1e-9)


def test_linear_scales_with_step_count():
    # DiT scales both endpoints by 1000/T so fewer steps span the same process.
    betas = linear_betas(250)
    assert betas[0] == pytest.approx(4e-4, rel=1e-12)
    assert betas[-1] == pytest.approx(0.08, rel=1e-12)


def test_cosine_matches_alpha_bar_formula_and_is_monotone():
    T, s = 1000, 0.008
    betas = cosine_betas(T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert np.all(np.diff(betas) >= 0), "cosine betas must be non-decreasing"
    assert betas.max() <= 0.999 and betas[-1] == 0.999  # last step is clipped
    assert betas[0] > 0

    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = np.cumprod(1 - betas)
    # Where no clip happened, ᾱ_t telescopes to f((t+1)/T) / f(0).
    unclipped = np.nonzero(betas < 0.999)[0]
    for t in unclipped[:: 97]:
        assert alpha_bar[t] == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alpha_bar_strictly_decreasing_in_open_interval(schedule):
    d = create_diffusion(noise_schedule=schedule)
    ab = d.alphas_cumprod
    assert ab.dtype == np.float64
    assert np.all(np.diff(ab) < 0)
    assert 0 < ab[-1] < ab[0] < 1
    np.testing.assert_allclose(ab, np.cumprod(1 - get_named_beta_schedule(schedule, 1000)))


def test_unknown_schedule_names_argument_and_choices():
    with pytest.raises(ValueError, match=r"noise_schedule.*linear, cosine"):
        get_named_beta_schedule("quadratic", 1000)
    with pytest.raises(ValueError, match="diffusion_steps"):
        linear_betas(0)
    with pytest.raises(ValueError, match="too few for the linear schedule"):
        linear_betas(20)  # β_T would be exactly 1
    assert cosine_betas(10).max() < 1
