"""DDPM and DDIM samplers: determinism, noise_fn as the only noise source, and end-to-end
recovery of known data distributions with the exact (analytic) ε-predictor as the model."""

import numpy as np
import pytest
import torch

from dtr_scale.diffusion import create_diffusion

torch.set_num_threads(1)

# ᾱ of the ORIGINAL 1000-step linear process: the stand-in models are called with original t.
ALPHA_BAR = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))


def gaussian_data_model(mu, s, learn_sigma):
    """Exact E[ε | x_t] for data x_0 ~ N(mu, s²) per element (s = 0 is a point mass at mu):
    x_t = √ᾱ x_0 + √(1-ᾱ) ε is jointly Gaussian with ε, so E[ε|x_t] = √(1-ᾱ)(x_t - √ᾱ mu)/(ᾱ s² + 1-ᾱ)."""

    def model(x, t):
        ab = ALPHA_BAR[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s * s + 1 - ab)
        return torch.cat([eps, torch.zeros_like(x)], 1) if learn_sigma else eps

    return model


def seeded_noise_fn(seed):
    gen = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype)


def per_sample_noise_fn(seeds):
    """One generator per sample, as the distributed sampler does."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return lambda x: torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in gens])


@pytest.mark.parametrize(
    "spacing, learn_sigma, sampler",
    [("", False, "p_sample_loop"), ("250", True, "p_sample_loop"),
     ("ddim50", True, "ddim_sample_loop"), ("10,15,20", False, "ddim_sample_loop")],
)
def test_point_mass_is_recovered(spacing, learn_sigma, sampler):
    target = torch.tensor([0.7, -1.3, 2.5, 0.0]).view(1, 4, 1, 1)
    d = create_diffusion(spacing, learn_sigma=learn_sigma)
    out = getattr(d, sampler)(gaussian_data_model(target, 0.0, learn_sigma), (8, 4, 1, 1),
                              noise_fn=seeded_noise_fn(0))
    torch.testing.assert_close(out, target.expand(8, 4, 1, 1), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "spacing, learn_sigma, sampler, eta, std_tol",
    [("", False, "p_sample_loop", 0.0, 0.03), ("250", True, "p_sample_loop", 0.0, 0.03),
     ("ddim50", False, "ddim_sample_loop", 0.0, 0.04), ("100", True, "ddim_sample_loop", 1.0, 0.03)],
)
def test_gaussian_data_distribution_is_recovered(spacing, learn_sigma, sampler, eta, std_tol):
    mu, s, n = 1.5, 0.5, 4000
    d = create_diffusion(spacing, learn_sigma=learn_sigma)
    kwargs = {"eta": eta} if sampler == "ddim_sample_loop" else {}
    out = getattr(d, sampler)(gaussian_data_model(mu, s, learn_sigma), (n, 1, 1, 1),
                              noise_fn=seeded_noise_fn(1), **kwargs)
    assert abs(out.mean().item() - mu) < 5 * s / n ** 0.5
    assert abs(out.std().item() - s) < std_tol


def test_ddim_eta0_is_deterministic():
    d = create_diffusion("ddim50")
    model = gaussian_data_model(0.3, 0.8, True)
    noise = torch.randn(3, 2, 2, 2)
    a = d.ddim_sample_loop(model, noise.shape, noise=noise.clone())
    torch.manual_seed(123)  # the global RNG must not matter at η = 0
    b = d.ddim_sample_loop(model, noise.shape, noise=noise.clone())
    assert torch.equal(a, b)
    c = d.ddim_sample_loop(model, noise.shape, noise=torch.randn(3, 2, 2, 2))
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler, kwargs", [("p_sample_loop", {}), ("ddim_sample_loop", {"eta": 1.0})])
def test_same_noise_fn_gives_same_samples(sampler, kwargs):
    d = create_diffusion("50")
    model = gaussian_data_model(0.3, 0.8, True)
    run = lambda seed: getattr(d, sampler)(model, (3, 2, 2, 2), noise_fn=seeded_noise_fn(seed), **kwargs)
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("sampler, kwargs", [("p_sample_loop", {}), ("ddim_sample_loop", {"eta": 0.5})])
def test_noise_fn_is_the_only_noise_source(sampler, kwargs):
    # Sample with seed 11 must not depend on which other samples share its batch (initial noise
    # included), so the distributed sampler can split the work any way it likes.
    d = create_diffusion("25", learn_sigma=False)
    model = gaussian_data_model(0.3, 0.8, False)
    pair = getattr(d, sampler)(model, (2, 2, 2, 2), noise_fn=per_sample_noise_fn([11, 12]), **kwargs)
    torch.manual_seed(999)
    alone = getattr(d, sampler)(model, (1, 2, 2, 2), noise_fn=per_sample_noise_fn([11]), **kwargs)
    torch.testing.assert_close(pair[:1], alone, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(pair[0], pair[1])


def test_progress_bar_and_device_options_do_not_change_results():
    d = create_diffusion("10")
    model = gaussian_data_model(0.3, 0.8, True)
    noise = torch.randn(2, 2, 2, 2)
    a = d.p_sample_loop(model, noise.shape, noise=noise, noise_fn=seeded_noise_fn(3))
    b = d.p_sample_loop(model, noise.shape, noise=noise, noise_fn=seeded_noise_fn(3),
                        progress=True, device="cpu")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="noise shape"):
        d.p_sample_loop(model, (3, 2, 2, 2), noise=noise)


def test_model_kwargs_reach_the_model():
    d = create_diffusion("5", learn_sigma=False)
    seen = []

    def model(x, t, y):
        seen.append(y)
        return torch.zeros_like(x)

    d.ddim_sample_loop(model, (2, 1, 1, 1), model_kwargs={"y": torch.tensor([3, 4])})
    assert len(seen) == 5 and all(v.tolist() == [3, 4] for v in seen)
