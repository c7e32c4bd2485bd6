"""Min-SNR and P2 weights per sample, applied to the per-sample MSE (not broadcast across the batch)."""

import math

import numpy as np
import pytest
import torch

from dtr_scale.diffusion import create_diffusion

torch.set_num_threads(1)

BETAS = np.linspace(1e-4, 0.02, 1000)
ALPHA_BAR = np.cumprod(1.0 - BETAS)


def snr(t):
    return ALPHA_BAR[t] / (1.0 - ALPHA_BAR[t])


def stand_in(x, t):
    """Deterministic ε̂ that depends on x and on the (original) timestep."""
    return 0.3 * x + 1e-3 * t.to(x.dtype).view(-1, 1, 1, 1)


def hand_mse(x0, noise, t):
    ab = ALPHA_BAR[t]
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
    eps_hat = 0.3 * xt + 1e-3 * t
    return ((noise - eps_hat) ** 2).mean()


T_BATCH = [0, 40, 120, 300, 650, 999]  # SNR from ~1e4 down to ~4e-5


def run_losses(diffusion):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(len(T_BATCH), 3, 4, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    out = diffusion.training_losses(stand_in, x0, torch.tensor(T_BATCH), noise=noise)
    return x0, noise, out


@pytest.mark.parametrize(
    "kwargs, weight",
    [
        (dict(loss_weighting="constant"), lambda s: 1.0),
        (dict(loss_weighting="min_snr"), lambda s: min(s, 5.0) / s),
        (dict(loss_weighting="min_snr", snr_gamma=1.0), lambda s: min(s, 1.0) / s),
        (dict(loss_weighting="p2"), lambda s: 1.0 / (1.0 + s)),
        (dict(loss_weighting="p2", p2_gamma=0.5, p2_k=2.0), lambda s: 1.0 / (2.0 + s) ** 0.5),
    ],
)
def test_weighted_mse_per_sample_by_hand(kwargs, weight):
    d = create_diffusion(learn_sigma=False, **kwargs)
    x0, noise, out = run_losses(d)
    assert out["mse"].shape == (len(T_BATCH),)
    for i, t in enumerate(T_BATCH):
        w = weight(snr(t))
        assert d.loss_weights[t] == pytest.approx(w, rel=1e-12)
        expected = w * hand_mse(x0[i].numpy(), noise[i].numpy(), t)
        assert out["mse"][i].item() == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(out["loss"], out["mse"])


def test_min_snr_batch_has_both_regimes():
    # The check above would be weak if every sample sat on the same branch of min().
    s = np.array([snr(t) for t in T_BATCH])
    assert (s > 5).any() and (s < 5).any()
    d = create_diffusion(loss_weighting="min_snr")
    w = d.loss_weights[T_BATCH]
    assert np.all(w <= 1.0) and np.any(w < 0.01) and np.any(w == 1.0)


def test_weights_under_learn_sigma_leave_vb_unweighted():
    d_const = create_diffusion(learn_sigma=True)
    d_p2 = create_diffusion(learn_sigma=True, loss_weighting="p2")
    net = lambda x, t: torch.cat([stand_in(x, t), torch.zeros_like(x)], dim=1)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(len(T_BATCH), 2, 3, 3, generator=gen, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor(T_BATCH)
    a = d_const.training_losses(net, x0, t, noise=noise)
    b = d_p2.training_losses(net, x0, t, noise=noise)
    torch.testing.assert_close(b["vb"], a["vb"])
    w = torch.tensor([1.0 / (1.0 + snr(ti)) for ti in T_BATCH], dtype=torch.float64)
    torch.testing.assert_close(b["mse"], w * a["mse"])


def test_respaced_weights_use_the_same_alpha_bar_as_the_original_timestep():
    d = create_diffusion("250", loss_weighting="min_snr")
    kept = sorted(d.use_timesteps)
    np.testing.assert_allclose(d.alphas_cumprod, ALPHA_BAR[kept], rtol=1e-10)
    expected = np.array([min(snr(t), 5.0) / snr(t) for t in kept])
    np.testing.assert_allclose(d.loss_weights, expected, rtol=1e-8)
