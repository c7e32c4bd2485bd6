"""`generate`: batch-size independence, samplers, guidance, precision, the uint8 conversion and grids."""
import numpy as np
import pytest
import torch
from PIL import Image

from dtr_scale.diffusion import create_diffusion
from dtr_scale.sampling import GuidedDenoiser, generate, grid_array, load_sampling_model, save_grid, to_uint8
from test_sample_weights import write_tiny_weights


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # module scope: set before the module-scoped fixtures run
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: threads only add contention here
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m, _ = load_sampling_model(write_tiny_weights(str(tmp_path_factory.mktemp("w") / "tiny.pt")))
    return m


DDPM10 = create_diffusion("10")
DDIM10 = create_diffusion("ddim10")


def test_batch_size_and_batch_membership_do_not_change_images(model):
    # Batches of >= 2 images (>= 4 rows with guidance): the CPU GEMMs here give every row the
    # same result whatever the batch size (1-3-row GEMMs take another kernel; see sample.py).
    whole, labels = generate(model, DDPM10, range(12), seed=3, cfg_scale=4.0, batch_size=12)
    halves, labels_h = generate(model, DDPM10, range(12), seed=3, cfg_scale=4.0, batch_size=4)
    np.testing.assert_array_equal(whole, halves)
    np.testing.assert_array_equal(labels, labels_h)
    # The same indices in another order and other company: the same images per index.
    picked, picked_labels = generate(model, DDPM10, [9, 2, 7, 4], seed=3, cfg_scale=4.0, batch_size=4)
    np.testing.assert_array_equal(picked, whole[[9, 2, 7, 4]])
    np.testing.assert_array_equal(picked_labels, labels[[9, 2, 7, 4]])
    other_seed, _ = generate(model, DDPM10, range(4), seed=4, cfg_scale=4.0)
    assert not np.array_equal(other_seed, whole[:4])
    assert whole.shape == (12, 16, 16, 1) and whole.dtype == np.uint8


def test_ddim_eta0_and_ddpm_both_run_and_differ(model):
    ddpm, _ = generate(model, DDPM10, range(4), seed=0, sampler="ddpm", cfg_scale=1.0)
    ddim, _ = generate(model, DDIM10, range(4), seed=0, sampler="ddim", eta=0.0, cfg_scale=1.0)
    again, _ = generate(model, DDIM10, range(4), seed=0, sampler="ddim", eta=0.0, cfg_scale=1.0)
    noisy, _ = generate(model, DDIM10, range(4), seed=0, sampler="ddim", eta=1.0, cfg_scale=1.0)
    assert ddpm.shape == ddim.shape == (4, 16, 16, 1)
    assert not np.array_equal(ddpm, ddim)
    np.testing.assert_array_equal(ddim, again)
    assert not np.array_equal(ddim, noisy)
    assert len(np.unique(ddim)) > 10  # real images, not a constant


def test_guidance_changes_the_output_and_scale_one_needs_no_doubled_batch(model):
    rows_seen = []
    # The patch embedder sees every model call's batch (forward_with_cfg bypasses module hooks).
    hook = model.x_embedder.register_forward_pre_hook(lambda mod, args: rows_seen.append(args[0].shape[0]))
    try:
        plain, labels = generate(model, DDIM10, range(4), seed=1, sampler="ddim", cfg_scale=1.0)
        assert set(rows_seen) == {4}
        rows_seen.clear()
        guided, guided_labels = generate(model, DDIM10, range(4), seed=1, sampler="ddim", cfg_scale=4.0)
        assert set(rows_seen) == {8}
    finally:
        hook.remove()
    np.testing.assert_array_equal(labels, guided_labels)
    assert np.abs(plain.astype(int) - guided.astype(int)).mean() > 1.0


def test_guided_denoiser_matches_forward_with_cfg_on_the_first_half(model):
    """Doubling only the model call equals DiT's doubled sampler state, first half."""
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([999, 500, 3])
    y = torch.tensor([1, 2, 3])
    with torch.no_grad():
        reference = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]),
                                           torch.cat([y, torch.full_like(y, 10)]), 4.0)[:3]
        ours = GuidedDenoiser(model, cfg_scale=4.0)(x, t, y)
        plain = GuidedDenoiser(model, cfg_scale=1.0)(x, t, y)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
        torch.testing.assert_close(plain, model(x, t, y), rtol=0, atol=0)


def test_cfg_channels_outside_the_model_is_refused(model):
    with pytest.raises(ValueError, match="cfg_channels=3"):
        GuidedDenoiser(model, cfg_scale=4.0, cfg_channels=3)


def test_bf16_autocast_runs_on_cpu_close_to_fp32(model):
    fp32, _ = generate(model, DDIM10, range(4), seed=2, sampler="ddim", cfg_scale=1.0)
    bf16, _ = generate(model, DDIM10, range(4), seed=2, sampler="ddim", cfg_scale=1.0, precision="bf16")
    assert bf16.dtype == np.uint8 and bf16.shape == fp32.shape
    assert np.abs(fp32.astype(int) - bf16.astype(int)).mean() < 8.0


def test_explicit_labels_and_model_mode_restored(model):
    model.train()
    try:
        images, labels = generate(model, DDIM10, range(3), seed=0, sampler="ddim", labels=[7, 7, 7])
        assert labels.tolist() == [7, 7, 7]
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="2 labels given for 3 indices"):
        generate(model, DDIM10, range(3), seed=0, labels=[1, 2])


def test_uint8_conversion_is_dits_formula_on_edge_values():
    # clamp(127.5 x + 128, 0, 255) then truncation: 0.5 -> 191.75 -> 191 (rounding would give 192)
    values = [-2.0, -1.0, -0.5, 0.0, 0.5, 127 / 128, 1.0, 2.0]
    expected = [0, 0, 64, 128, 191, 254, 255, 255]  # 0.5 | 64.25 | 128 | 191.75 | 254.50 | 255.5
    x = torch.tensor(values).view(1, 1, 1, -1)
    assert to_uint8(x)[0, 0, :, 0].tolist() == expected
    nchw = torch.stack([torch.full((2, 3), -1.0), torch.zeros(2, 3), torch.ones(2, 3)]).unsqueeze(0)
    nhwc = to_uint8(nchw)
    assert nhwc.shape == (1, 2, 3, 3) and nhwc.dtype == np.uint8
    assert nhwc[0, 1, 2].tolist() == [0, 128, 255]


def test_grid_puts_one_class_per_row_for_balanced_labels(tmp_path):
    n, classes = 12, 3
    images = np.stack([np.full((4, 4, 1), 10 * i, np.uint8) for i in range(n)])
    labels = np.arange(n) % classes
    grid = grid_array(images, nrow=8, labels=labels, padding=2)
    assert grid.shape == (3 * 6 + 2, 4 * 6 + 2, 1)
    for c in range(classes):
        for col in range(4):
            top, left = 2 + c * 6, 2 + col * 6
            assert grid[top, left, 0] == 10 * (c + classes * col)
    path = save_grid(images, str(tmp_path / "g.png"), nrow=4, upscale=2)
    png = np.asarray(Image.open(path))
    assert png.shape == (2 * (3 * 6 + 2), 2 * (4 * 6 + 2))
