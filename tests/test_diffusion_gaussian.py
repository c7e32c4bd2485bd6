"""Forward process, posterior and the training-loss terms against hand computations in float64."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from dtr_scale.diffusion import create_diffusion

torch.set_num_threads(1)

# The linear schedule computed here from its definition, independent of the package.
BETAS = np.linspace(1e-4, 0.02, 1000)
ALPHA_BAR = np.cumprod(1.0 - BETAS)
ALPHA_BAR_PREV = np.append(1.0, ALPHA_BAR[:-1])


def bayes_posterior(x0, xt, t):
    """q(x_{t-1}|x_t,x_0) as the product of N(√ᾱ_{t-1}x0, 1-ᾱ_{t-1}) and q(x_t|x_{t-1})."""
    a_prev, beta = ALPHA_BAR_PREV[t], BETAS[t]
    if t == 0:  # x_{-1} is x_0 itself: a point mass
        return x0, 0.0
    precision = 1.0 / (1.0 - a_prev) + (1.0 - beta) / beta
    var = 1.0 / precision
    mean = var * (math.sqrt(a_prev) * x0 / (1.0 - a_prev) + math.sqrt(1.0 - beta) * xt / beta)
    return mean, var


def test_q_sample_exact_with_given_noise():
    d = create_diffusion()
    x0 = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    out = d.q_sample(x0, t, noise=noise)
    assert out.dtype == torch.float64
    for i, ti in enumerate(t.tolist()):
        expected = math.sqrt(ALPHA_BAR[ti]) * x0[i] + math.sqrt(1 - ALPHA_BAR[ti]) * noise[i]
        torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=1e-12)


def test_q_sample_statistics_match_closed_form():
    torch.manual_seed(0)
    d = create_diffusion(noise_schedule="linear")
    n = 20000
    for t_value, x0_value in [(0, 1.5), (250, -0.7), (700, 2.0), (999, 1.0)]:
        x0 = torch.full((n, 1), x0_value)
        x = d.q_sample(x0, torch.full((n,), t_value))
        mean, var = math.sqrt(ALPHA_BAR[t_value]) * x0_value, 1 - ALPHA_BAR[t_value]
        assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n)
        # Var of the sample variance of a Gaussian is 2σ⁴/(n-1).
        assert abs(x.var().item() - var) < 5 * var * math.sqrt(2 / (n - 1))


def test_posterior_matches_bayes_product():
    d = create_diffusion()
    x0 = torch.randn(5, 2, 3, dtype=torch.float64)
    xt = torch.randn(5, 2, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 37, 600, 999])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        m, v = bayes_posterior(x0[i], xt[i], ti)
        torch.testing.assert_close(mean[i], m, rtol=1e-9, atol=1e-12)
        assert var[i].flatten()[0].item() == pytest.approx(v, rel=1e-9, abs=1e-15)
        if ti > 0:
            assert log_var[i].flatten()[0].item() == pytest.approx(math.log(v), rel=1e-9)
    # At t=0 the log variance is clipped to log β̃_1 (finite).
    assert torch.isfinite(log_var).all()
    assert log_var[0].flatten()[0].item() == pytest.approx(math.log(bayes_posterior(0, 0, 1)[1]))


class TwoHeads(nn.Module):
    """Deterministic stand-in network with separate ε and variance heads (1x1 convs)."""

    def __init__(self, channels):
        super().__init__()
        torch.manual_seed(1)
        self.eps_head = nn.Conv2d(channels, channels, 1)
        self.var_head = nn.Conv2d(channels, channels, 1)

    def forward(self, x, t):
        return torch.cat([self.eps_head(x), torch.tanh(self.var_head(x))], dim=1)


def hand_vb(x0, noise, t, eps_hat, v):
    """VB term in bits/dim for one sample, all in float64 numpy from the definitions."""
    ab = ALPHA_BAR[t]
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
    pred_x0 = (xt - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
    model_mean, _ = bayes_posterior(pred_x0, xt, t)
    min_log = math.log(bayes_posterior(0, 0, max(t, 1))[1])  # β̃_t, clipped to β̃_1 at t=0
    log_var = (v + 1) / 2 * math.log(BETAS[t]) + (1 - v) / 2 * min_log
    if t > 0:
        true_mean, true_var = bayes_posterior(x0, xt, t)
        lv1, lv2 = math.log(true_var), log_var
        kl = 0.5 * (-1 + lv2 - lv1 + np.exp(lv1 - lv2) + (true_mean - model_mean) ** 2 * np.exp(-lv2))
        return kl.mean() / math.log(2)
    sigma = np.exp(0.5 * log_var)
    hi = norm.cdf((x0 - model_mean + 1 / 255) / sigma)
    lo = norm.cdf((x0 - model_mean - 1 / 255) / sigma)
    prob = np.where(x0 < -0.999, hi, np.where(x0 > 0.999, 1 - lo, hi - lo))
    return -np.log(prob).mean() / math.log(2)


@pytest.mark.parametrize("t_values", [[0, 0, 0], [1, 250, 999]])
def test_vb_term_equals_kl_or_decoder_nll_by_hand(t_values):
    torch.manual_seed(2)
    net = TwoHeads(2).double()
    d = create_diffusion(learn_sigma=True)
    x0 = torch.rand(3, 2, 2, 2, dtype=torch.float64) * 1.8 - 0.9
    x0[0, 0, 0, 0], x0[1, 1, 1, 1] = 1.0, -1.0  # exercise both open edge bins
    noise = torch.randn_like(x0)
    t = torch.tensor(t_values)
    out = d.training_losses(net, x0, t, noise=noise)
    xt = d.q_sample(x0, t, noise=noise)
    with torch.no_grad():
        raw = net(xt, t)
    for i, ti in enumerate(t_values):
        eps_hat, v = raw[i, :2].numpy(), raw[i, 2:].numpy()
        expected = hand_vb(x0[i].numpy(), noise[i].numpy(), ti, eps_hat, v)
        assert out["vb"][i].item() == pytest.approx(expected, rel=1e-6)
        mse = ((noise[i].numpy() - eps_hat) ** 2).mean()
        assert out["mse"][i].item() == pytest.approx(mse, rel=1e-9)
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])
    assert torch.isfinite(out["vb"]).all() and (out["vb"] >= 0).all()


def _no_grad(p):
    return p.grad is None or torch.count_nonzero(p.grad) == 0


def test_vb_trains_only_the_variance_and_mse_only_the_mean():
    net = TwoHeads(2)
    d = create_diffusion(learn_sigma=True)
    x0 = torch.randn(6, 2, 3, 3)
    t = torch.tensor([0, 3, 100, 400, 800, 999])
    d.training_losses(net, x0, t)["vb"].sum().backward()
    # The mean output is frozen inside the VB term: no gradient reaches the ε head.
    assert _no_grad(net.eps_head.weight)
    assert net.var_head.weight.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)
    d.training_losses(net, x0, t)["mse"].sum().backward()
    assert _no_grad(net.var_head.weight)
    assert net.eps_head.weight.grad.abs().sum() > 0


def test_learn_sigma_false_gives_zero_vb_and_loss_equal_mse():
    d = create_diffusion(learn_sigma=False)
    net = lambda x, t: 0.5 * x
    x0 = torch.randn(4, 3, 2, 2)
    out = d.training_losses(net, x0, torch.tensor([0, 5, 500, 999]))
    assert set(out) == {"mse", "vb", "loss"}
    assert out["vb"].shape == (4,) and torch.count_nonzero(out["vb"]) == 0
    assert torch.equal(out["loss"], out["mse"]) and (out["mse"] > 0).all()


def test_fixed_variance_is_beta_without_learn_sigma():
    d = create_diffusion(learn_sigma=False)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 1, 999])
    out = d.p_mean_variance(lambda x, t: torch.zeros_like(x), x, t)
    expected = [bayes_posterior(0, 0, 1)[1], BETAS[1], BETAS[999]]
    for i in range(3):
        assert out["variance"][i].flatten()[0].item() == pytest.approx(expected[i], rel=1e-9)


def test_wrong_output_width_is_a_clear_error():
    d = create_diffusion(learn_sigma=True)
    with pytest.raises(ValueError, match="learn_sigma"):
        d.training_losses(lambda x, t: x, torch.randn(2, 4, 2, 2), torch.tensor([1, 2]))
