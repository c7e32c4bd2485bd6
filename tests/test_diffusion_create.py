"""create_diffusion: which class comes back, and clear errors for bad arguments."""

import numpy as np
import pytest

import dtr_scale.diffusion as diffusion
from dtr_scale.diffusion import create_diffusion
from dtr_scale.diffusion.gaussian_diffusion import GaussianDiffusion
from dtr_scale.diffusion.respace import SpacedDiffusion


def test_exports():
    for name in ["create_diffusion", "AntUncertaintyWeighting", "timestep_cluster",
                 "uniform_timesteps", "space_timesteps"]:
        assert callable(getattr(diffusion, name))


def test_plain_and_spaced_classes():
    plain = create_diffusion()
    assert type(plain) is GaussianDiffusion and plain.num_timesteps == 1000
    assert plain.learn_sigma is True
    spaced = create_diffusion("250")
    assert isinstance(spaced, SpacedDiffusion) and spaced.num_timesteps == 250
    # Keeping every step is no respacing at all.
    assert type(create_diffusion("1000")) is GaussianDiffusion
    assert type(create_diffusion(None)) is GaussianDiffusion
    assert create_diffusion(diffusion_steps=100).num_timesteps == 100


def test_ant_uw_means_unit_per_sample_weights():
    d = create_diffusion(loss_weighting="ant_uw")
    np.testing.assert_array_equal(d.loss_weights, np.ones(1000))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(noise_schedule="quadratic"), r"noise_schedule='quadratic'.*linear, cosine"),
        (dict(loss_weighting="snr"), r"loss_weighting='snr'.*constant, min_snr, p2, ant_uw"),
        (dict(timestep_respacing="fast"), r"timestep_respacing='fast'.*ddim50"),
        (dict(timestep_respacing="ddimX"), r"timestep_respacing='ddimX'"),
        (dict(timestep_respacing="2000"), r"timestep_respacing asks for 2000"),
        (dict(timestep_respacing="ddim3000"), r"ddim3000"),
        (dict(diffusion_steps=0), r"diffusion_steps"),
        (dict(learn_sigma="yes"), r"learn_sigma"),
        (dict(loss_weighting="min_snr", snr_gamma=0.0), r"snr_gamma"),
        (dict(loss_weighting="p2", p2_k=-1.0), r"p2_k"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        create_diffusion(**kwargs)
