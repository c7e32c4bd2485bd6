"""Flow matching: path coefficients in closed form, SiT's time ranges and draw order, the loss."""
import math

import pytest
import torch

from dtr_scale.flow import create_transport
from dtr_scale.flow.paths import GVPPath, LinearPath, VPPath
from dtr_scale.models import RoutingConfig, create_model

T = torch.linspace(0.01, 0.99, 23, dtype=torch.float64)


def closed_forms(name, t):
    """(α, α̇, σ, σ̇) written out by hand for each path."""
    if name == "Linear":
        return t, torch.ones_like(t), 1 - t, -torch.ones_like(t)
    if name == "GVP":
        h = math.pi / 2
        return torch.sin(h * t), h * torch.cos(h * t), torch.cos(h * t), -h * torch.sin(h * t)
    s = 1 - t  # VP: log α = -(s²/4)(20 - 0.1) - (s/2)·0.1
    log_a = -0.25 * s**2 * 19.9 - 0.5 * s * 0.1
    a = torch.exp(log_a)
    da = a * (0.5 * s * 19.9 + 0.05)
    sig = torch.sqrt(1 - a**2)
    return a, da, sig, -a * da / sig


@pytest.mark.parametrize("name,path", [("Linear", LinearPath()), ("GVP", GVPPath()), ("VP", VPPath())])
def test_path_coefficients_closed_form(name, path):
    a, da = path.alpha(T)
    s, ds = path.sigma(T)
    ea, eda, es, eds = closed_forms(name, T)
    for got, want in ((a, ea), (da, eda), (s, es), (ds, eds)):
        torch.testing.assert_close(torch.as_tensor(got, dtype=torch.float64).expand_as(T), want, rtol=1e-12, atol=1e-12)
    # The derivatives are the derivatives: compare with autograd.
    tt = T.clone().requires_grad_(True)
    grad_a = torch.autograd.grad(closed_forms(name, tt)[0].sum(), tt)[0]
    grad_s = torch.autograd.grad(closed_forms(name, tt)[2].sum(), tt)[0]
    torch.testing.assert_close(torch.as_tensor(da, dtype=torch.float64).expand_as(T), grad_a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(ds, dtype=torch.float64).expand_as(T), grad_s, rtol=1e-10, atol=1e-12)
    # α̇/α written for stability equals the plain ratio.
    torch.testing.assert_close(torch.as_tensor(path.alpha_ratio(T), dtype=torch.float64).expand_as(T), eda / ea, rtol=1e-10, atol=0)


def test_eps_and_intervals_follow_sit():
    lin = create_transport()
    assert (lin.train_eps, lin.sample_eps) == (0, 0) and lin.interval() == (0, 1)
    assert lin.interval(sde=True, sampling=True, last_step_size=0.04) == (0, 0.96)
    noise = create_transport("Linear", "noise")
    assert noise.interval() == (1e-3, 1 - 1e-3)
    vp = create_transport("VP")
    assert (vp.train_eps, vp.sample_eps) == (1e-5, 1e-3)
    assert vp.interval() == (0, 1 - 1e-5) and vp.interval(sampling=True) == (0, 1 - 1e-3)
    assert vp.interval(sampling=True, reverse=True) == (1, 1 - (1 - 1e-3))


def test_conversions_are_consistent():
    torch.manual_seed(0)
    x, v, t = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.rand(3, dtype=torch.float64) * 0.9 + 0.05
    for path in ("Linear", "GVP", "VP"):
        tr = create_transport(path)
        score = tr.score_from_velocity(v, x, t)
        torch.testing.assert_close(tr.velocity_from_score(score, x, t), v)
        sigma = tr.path.sigma(t.view(-1, 1, 1, 1))[0]
        torch.testing.assert_close(tr.noise_from_velocity(v, x, t), -score * sigma)


def test_draw_order_and_explicit_draws():
    tr = create_transport()
    x1 = torch.randn(5, 2, 4, 4)
    seen = {}

    def model(xt, t, y):
        seen["xt"], seen["t"] = xt, t
        return torch.zeros_like(xt)

    torch.manual_seed(3)
    loss = tr.training_losses(model, x1, {"y": None})["loss"]
    torch.manual_seed(3)
    x0, t = torch.randn_like(x1), torch.rand(5)  # SiT's order: x0 first, then t
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(seen["xt"], t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * x0)
    assert loss.shape == (5,)
    torch.testing.assert_close(loss, ((x1 - x0) ** 2).mean(dim=(1, 2, 3)))  # zero model: |u_t|²
    again = tr.training_losses(model, x1, {"y": None}, t=t, x0=x0)["loss"]
    torch.testing.assert_close(again, loss)


def test_learn_sigma_output_uses_first_channels():
    tr = create_transport()
    x1 = torch.randn(2, 3, 4, 4)
    out = tr.training_losses(lambda xt, t: torch.cat([torch.zeros_like(xt), 100 + xt], dim=1), x1)["pred"]
    assert out.shape == x1.shape and bool((out == 0).all())


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="diffusion.flow.path"):
        create_transport("Cosine")
    with pytest.raises(ValueError, match="diffusion.flow.prediction"):
        create_transport(prediction="x0")


@pytest.mark.parametrize("routing", [None, RoutingConfig(sharing_ratio=0.6)], ids=["plain", "dtr"])
def test_flow_loss_decreases_for_small_dit(routing):
    torch.manual_seed(0)
    model = create_model("DiT-T/2", input_size=8, in_channels=2, num_classes=4, routing=routing,
                         time_input="continuous")
    tr = create_transport()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.arange(16) % 4
    x1 = torch.randn(4, 2, 8, 8).clamp(-1, 1)[y]  # one image per class: learnable exactly
    gen = torch.Generator().manual_seed(1)
    t_fixed, x0_fixed = torch.rand(16, generator=gen), torch.randn(x1.shape, generator=gen)
    with torch.no_grad():
        before = tr.training_losses(model, x1, {"y": y}, t=t_fixed, x0=x0_fixed)["loss"].mean().item()
    for _ in range(30):
        loss = tr.training_losses(model, x1, {"y": y})["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = tr.training_losses(model, x1, {"y": y}, t=t_fixed, x0=x0_fixed)["loss"].mean().item()
    assert after < 0.9 * before, (before, after)
