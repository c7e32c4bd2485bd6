"""ANT uncertainty weighting: the loss formula, absent clusters, gradients, stratified sampling."""

import math

import pytest
import torch

from dtr_scale.diffusion import AntUncertaintyWeighting, timestep_cluster, uniform_timesteps

torch.set_num_threads(1)


def test_timestep_cluster_boundaries():
    t = torch.tensor([0, 124, 125, 249, 250, 874, 875, 999])
    assert timestep_cluster(t).tolist() == [0, 0, 1, 1, 2, 6, 7, 7]
    # Non-divisible T: cluster = floor(t*K/T) with K=3, T=10.
    assert timestep_cluster(torch.arange(10), 10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_loss_matches_formula_by_hand_and_absent_clusters_add_nothing():
    K, T = 4, 100
    ant = AntUncertaintyWeighting(num_timesteps=T, num_clusters=K)
    s = [0.5, -0.3, 0.7, 1.2]
    with torch.no_grad():
        ant.log_vars.copy_(torch.tensor(s))
    t = torch.tensor([3, 20, 30, 99, 80])           # clusters 0, 0, 1, 3, 3; cluster 2 absent
    losses = torch.tensor([1.0, 3.0, 0.4, 2.0, 5.0], requires_grad=True)
    total = ant(losses, t)
    L = {0: 2.0, 1: 0.4, 3: 3.5}
    expected = sum(0.5 * (math.exp(-s[k]) * L[k] / K + s[k]) for k in L)
    assert total.dim() == 0
    assert total.item() == pytest.approx(expected, rel=1e-6)

    total.backward()
    grad = ant.log_vars.grad
    assert grad[2].item() == 0.0  # absent cluster: no gradient, and no s_k regulariser
    for k in L:  # d/ds_k ½(e^{-s}L/K + s) = ½(1 - e^{-s}L/K)
        assert grad[k].item() == pytest.approx(0.5 * (1 - math.exp(-s[k]) * L[k] / K), rel=1e-6)
    # Gradient to each sample: ½ e^{-s_k} / (K n_k).
    n = {0: 2, 1: 1, 3: 2}
    clusters = [0, 0, 1, 3, 3]
    for i, k in enumerate(clusters):
        assert losses.grad[i].item() == pytest.approx(0.5 * math.exp(-s[k]) / (K * n[k]), rel=1e-6)

    # Changing the absent cluster's s_k changes nothing.
    with torch.no_grad():
        ant.log_vars[2] = 9.0
    assert ant(losses, t).item() == pytest.approx(expected, rel=1e-6)


def test_s_converges_to_log_of_cluster_loss_over_k():
    # Minimiser of ½(e^{-s}L/K + s) is s = log(L/K): a check that optimisation goes where it should.
    K = 8
    ant = AntUncertaintyWeighting(num_clusters=K)
    opt = torch.optim.Adam(ant.param_groups(lr=0.05))
    t = torch.arange(0, 1000, 125)
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.1, 0.3, 8.0, 1.5])
    for _ in range(1500):
        opt.zero_grad()
        ant(losses, t).backward()
        opt.step()
    torch.testing.assert_close(ant.log_vars.detach(), torch.log(losses / K), atol=1e-2, rtol=0)


def test_param_groups_have_own_lr_and_no_weight_decay():
    ant = AntUncertaintyWeighting()
    groups = ant.param_groups()
    assert len(groups) == 1 and groups[0]["lr"] == 0.025 and groups[0]["weight_decay"] == 0.0
    assert groups[0]["params"][0] is ant.log_vars
    assert ant.log_vars.shape == (8,) and torch.count_nonzero(ant.log_vars) == 0
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": model.parameters()}] + ant.param_groups(lr=0.1),
                            lr=1e-4, weight_decay=0.5)
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("batch_size", [0, 1, 7, 8, 9, 30, 256])
def test_stratified_counts_for_any_batch_size(batch_size):
    K = 8
    ant = AntUncertaintyWeighting(num_clusters=K)
    gen = torch.Generator().manual_seed(batch_size)
    for _ in range(20):
        t = ant.sample_timesteps(batch_size, generator=gen)
        assert t.dtype == torch.long and t.shape == (batch_size,)
        assert ((t >= 0) & (t < 1000)).all()
        counts = torch.bincount(timestep_cluster(t), minlength=K)
        assert counts.sum().item() == batch_size
        assert set(counts.tolist()) <= {batch_size // K, -(-batch_size // K)}


def test_every_cluster_drawn_equally_often_and_covered():
    K, T, B, batches = 8, 1000, 7, 4000
    ant = AntUncertaintyWeighting(T, K)
    gen = torch.Generator().manual_seed(0)
    t = torch.cat([ant.sample_timesteps(B, generator=gen) for _ in range(batches)])
    counts = torch.bincount(timestep_cluster(t), minlength=K).double()
    mean = counts.mean().item()
    assert (counts.max() - counts.min()).item() <= 0.03 * mean
    # Each batch skips exactly one cluster; the skips should be uniform over K (chi-square,
    # 7 degrees of freedom: 24.3 is the 0.1 % critical value).
    skips = batches - counts
    chi2 = (((skips - batches / K) ** 2) / (batches / K)).sum().item()
    assert chi2 < 24.3
    for k in range(K):  # t uniform within the cluster: every value is hit
        inside = t[timestep_cluster(t) == k]
        assert set(inside.tolist()) == set(range(k * T // K, (k + 1) * T // K))


def test_uneven_clusters_sampled_inside_their_bounds():
    ant = AntUncertaintyWeighting(num_timesteps=10, num_clusters=3)
    gen = torch.Generator().manual_seed(1)
    t = torch.cat([ant.sample_timesteps(3, generator=gen) for _ in range(300)])
    assert set(t.tolist()) == set(range(10))
    # exactly one sample per cluster in each batch of 3
    per_batch = timestep_cluster(t, 10, 3).view(300, 3).sort(dim=1).values
    assert (per_batch == torch.tensor([0, 1, 2])).all()


def test_sampling_is_reproducible_from_the_generator():
    ant = AntUncertaintyWeighting()
    a = ant.sample_timesteps(30, generator=torch.Generator().manual_seed(5))
    b = ant.sample_timesteps(30, generator=torch.Generator().manual_seed(5))
    c = ant.sample_timesteps(30, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_uniform_timesteps():
    gen = torch.Generator().manual_seed(0)
    t = uniform_timesteps(50000, 1000, generator=gen)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    counts = torch.bincount(timestep_cluster(t), minlength=8).double()
    assert ((counts - 6250).abs() < 5 * math.sqrt(6250)).all()
    assert torch.equal(t[:10], uniform_timesteps(10, 1000, generator=torch.Generator().manual_seed(0)))


def test_bad_input_is_a_clear_error():
    ant = AntUncertaintyWeighting()
    with pytest.raises(ValueError, match="per_sample_loss"):
        ant(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="0..999"):
        ant(torch.ones(2), torch.tensor([1, 1000]))
    with pytest.raises(ValueError, match="num_clusters"):
        AntUncertaintyWeighting(num_timesteps=4, num_clusters=8)
