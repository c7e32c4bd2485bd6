"""Flow samplers: Euler on a known ODE, exact Gaussian flows for dopri5 and the SDE last step,
dopri5 against many-step Euler on a tiny DiT, and DTR task indices in continuous time."""
import pytest
import torch

from dtr_scale.flow import Sampler, create_transport
from dtr_scale.flow.paths import expand_like
from dtr_scale.models import RoutingConfig, create_model
from dtr_scale.models.routing import task_index_from_continuous

S = 0.5  # data ~ N(0, S² I): velocity, score and E[x1 | x_t] are known in closed form


def gaussian_velocity(path):
    """The exact velocity field of a Linear/GVP/VP path when x1 ~ N(0, S² I)."""
    def model(x, t, **_):
        te = expand_like(t, x)
        a, da = path.alpha(te)
        s, ds = path.sigma(te)
        return (da * a * S**2 + ds * s) / (a**2 * S**2 + s**2) * x
    return model


def test_euler_matches_the_discrete_solution_of_a_linear_ode():
    # dx/dt = x: n Euler steps of size h give exactly (1 + h)^n · z.
    z = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    states = Sampler(create_transport()).sample_ode(sampling_method="euler", num_steps=101)(z, lambda x, t: x)
    assert len(states) == 101
    torch.testing.assert_close(states[-1], (1 + 0.01) ** 100 * z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(states[0], z)


@pytest.mark.parametrize("path_type", ["Linear", "GVP"])
def test_dopri5_maps_noise_to_the_gaussian_exactly(path_type):
    # Along the exact flow x_t = sqrt(α²S² + σ²)·z, so x_1 = S·z.
    tr = create_transport(path_type)
    z = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    out = Sampler(tr).sample_ode(atol=1e-8, rtol=1e-6)(z, gaussian_velocity(tr.path))[-1]
    torch.testing.assert_close(out, S * z, rtol=1e-4, atol=1e-4)


def test_sde_last_steps():
    tr = create_transport()
    sampler = Sampler(tr)
    model = gaussian_velocity(tr.path)
    z = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    kwargs = dict(sampling_method="Euler", diffusion_form="sigma", num_steps=20, last_step_size=0.04)
    runs = {}
    for last in (None, "Mean", "Tweedie", "Euler"):
        torch.manual_seed(0)
        runs[last] = sampler.sample_sde(last_step=last, **kwargs)(z, model)
        assert len(runs[last]) == 20
    # Same noise, same grid: the SDE part is identical; only the last state differs.
    x = runs["Mean"][-2]
    torch.testing.assert_close(runs["Tweedie"][-2], x)
    t1 = 0.96
    a, s = t1, 1 - t1
    # Tweedie: E[x1 | x_t] = α S² x / (α² S² + σ²) for Gaussian data.
    torch.testing.assert_close(runs["Tweedie"][-1], a * S**2 / (a**2 * S**2 + s**2) * x)
    v = model(x, torch.full((6,), t1, dtype=torch.float64))
    torch.testing.assert_close(runs["Euler"][-1], x + 0.04 * v)
    score = tr.score_from_velocity(v, x, torch.full((6,), t1, dtype=torch.float64))
    torch.testing.assert_close(runs["Mean"][-1], x + 0.04 * (v + s * score))
    # last_step=None: the grid runs to t = 1 and the last SDE state is the sample.
    torch.testing.assert_close(runs[None][-1], runs[None][-1])
    assert not torch.equal(runs[None][-1], runs["Mean"][-1])


def test_sde_samples_have_the_data_spread():
    tr = create_transport()
    z = torch.randn(4000, 1, 1, 1, dtype=torch.float64)
    torch.manual_seed(0)
    for method in ("Euler", "Heun"):
        out = Sampler(tr).sample_sde(sampling_method=method, diffusion_form="sigma", num_steps=100)(
            z, gaussian_velocity(tr.path))[-1]
        assert abs(out.std().item() - S) < 0.03, (method, out.std().item())


def test_dopri5_agrees_with_many_euler_steps_on_a_tiny_dit():
    torch.manual_seed(0)
    model = create_model("DiT-T/2", input_size=8, in_channels=2, num_classes=4,
                         routing=RoutingConfig(sharing_ratio=0.6), time_input="continuous").eval()
    for p in model.final_layer.parameters():  # adaLN-Zero starts at zero output: make it move
        torch.nn.init.normal_(p, std=0.05)
    z, y = torch.randn(2, 2, 8, 8), torch.tensor([0, 3])
    sampler = Sampler(create_transport())
    with torch.no_grad():
        fine = sampler.sample_ode(sampling_method="dopri5", atol=1e-6, rtol=1e-5)(z, model, y=y)[-1]
        euler = sampler.sample_ode(sampling_method="euler", num_steps=201)(z, model, y=y)[-1]
        coarse = sampler.sample_ode(sampling_method="euler", num_steps=11)(z, model, y=y)[-1]
    err_fine, err_coarse = (euler - fine).abs().max().item(), (coarse - fine).abs().max().item()
    assert (fine - z).abs().max() > 0.05  # the model does move the state
    assert err_fine < 5e-3 and err_fine < err_coarse / 10, (err_fine, err_coarse)


def test_bad_sampler_settings_are_rejected():
    s = Sampler(create_transport())
    with pytest.raises(ValueError, match="diffusion_form"):
        s.sample_sde(diffusion_form="quadratic")
    with pytest.raises(ValueError, match="ode solver"):
        s.sample_ode(sampling_method="leapfrog")


def test_continuous_time_task_index_and_masks():
    # task(t) = round((1 - t)·999), torch.round = half to even: 999·0.5 = 499.5 -> 500.
    t = torch.tensor([0.0, 0.5, 1.0])
    assert task_index_from_continuous(t, 1000).tolist() == [999, 500, 0]
    model = create_model("DiT-T/2", input_size=8, in_channels=2, num_classes=4,
                         routing=RoutingConfig(sharing_ratio=0.6), time_input="continuous").eval()
    masks = model.router(model.task_index(t), torch.float32)[0, :, 0]
    table = model.router.masks[0].float()
    for row, task in zip(masks, (999, 500, 0)):
        assert torch.equal(row, table[task])
    assert not torch.equal(table[999], table[0])
    # The forward reads exactly those rows: changing row 499 leaves the t = 0.5 output alone,
    # changing row 500 moves it.
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    x, y = torch.randn(3, 2, 8, 8), torch.tensor([0, 1, 2])
    with torch.no_grad():
        base = model(x, t, y)
        model.router.masks[0, 499] = 1 - model.router.masks[0, 499]
        assert torch.equal(model(x, t, y), base)
        model.router.masks[0, 500] = 1 - model.router.masks[0, 500]
        moved = model(x, t, y)
    assert not torch.equal(moved[1], base[1]) and torch.equal(moved[0], base[0])
