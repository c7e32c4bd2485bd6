"""Statistics, Inception Score and precision/recall against direct single-process formulas."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from dtr_scale.evaluation import (
    FeatureMoments,
    InceptionScoreAccumulator,
    frechet_distance,
    gaussian_from_features,
    inception_score,
    manifold_radii,
    precision_recall,
    reduce_moments,
)
from dtr_scale.evaluation.collectives import rank_slice

torch.set_num_threads(1)


# ---------------------------------------------------------------- statistics


def test_moments_match_numpy_mean_and_cov():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((257, 12)) * rng.uniform(0.5, 3, 12) + rng.uniform(-2, 2, 12)
    m = FeatureMoments(12)
    for i in range(0, 257, 50):  # batches of uneven size
        m.update(torch.from_numpy(x[i : i + 50]))
    g = m.reduce().gaussian()
    assert g.count == 257
    np.testing.assert_allclose(g.mu, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert np.array_equal(g.sigma, g.sigma.T)


def test_reduce_moments_keeps_accumulators_apart():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((30, 7)) + 5
    ma, mb = FeatureMoments(4), FeatureMoments(7)
    ma.update(a)
    mb.update(b)
    ra, rb = reduce_moments([ma, mb])
    np.testing.assert_allclose(ra.gaussian().sigma, np.cov(a, rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(rb.gaussian().mu, b.mean(0), rtol=1e-12)


def test_moments_reject_too_few_and_wrong_width():
    m = FeatureMoments(3)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        m.update(np.zeros((2, 4)))
    m.update(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        m.gaussian()


def test_fid_of_two_feature_sets_matches_numpy_pipeline():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((400, 16)), rng.standard_normal((300, 16)) * 1.3 + 0.2
    gx, gy = gaussian_from_features(x), gaussian_from_features(y)
    direct = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(gx.mu, gx.sigma, gy.mu, gy.sigma) == pytest.approx(direct, rel=1e-10)


# ---------------------------------------------------------------- Inception Score


def _adm_inception_score(logits, split_size):
    """The ADM evaluator's recipe, written out in numpy: softmax, consecutive splits, mean of exp(KL)."""
    z = logits - logits.max(axis=1, keepdims=True)
    preds = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


@pytest.mark.parametrize("n,split", [(1000, 5000), (1037, 250), (60, 7)])
def test_inception_score_matches_adm_recipe(n, split):
    rng = np.random.default_rng(n)
    logits = rng.standard_normal((n, 50)) * 3.0
    expected = _adm_inception_score(logits, split)
    assert inception_score(logits, split) == pytest.approx(expected, rel=1e-10)


def test_inception_score_depends_on_split_order():
    # Sorting by predicted class makes each split nearly one class, so IS collapses; ADM's
    # consecutive splits must therefore be taken in file order, never shuffled.
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((400, 10)) * 4.0
    order = np.argsort(logits.argmax(1), kind="stable")
    assert inception_score(logits[order], 40) < 0.8 * inception_score(logits, 40)


def test_accumulator_equals_direct_for_any_partition_and_batch_order():
    rng = np.random.default_rng(4)
    n, split = 523, 100
    logits = rng.standard_normal((n, 30)) * 2.5
    expected = inception_score(logits, split)
    for world_size in (1, 2, 3):
        acc = InceptionScoreAccumulator(30, n, split)
        batches = []
        for rank in range(world_size):
            start, stop = rank_slice(n, rank, world_size)
            batches += [(b, min(b + 17, stop)) for b in range(start, stop, 17)]
        for i in rng.permutation(len(batches)):  # arrival order must not matter
            b0, b1 = batches[i]
            acc.update(logits[b0:b1], b0)
        assert acc.result() == pytest.approx(expected, rel=1e-11)


def test_accumulator_detects_missing_rows():
    acc = InceptionScoreAccumulator(5, 10, 4)
    acc.update(np.zeros((6, 5)), 0)
    with pytest.raises(RuntimeError, match="saw 6 rows but expected 10"):
        acc.result()


# ---------------------------------------------------------------- precision / recall


def _direct_precision_recall(ref, samples, k):
    """Kynkäänniemi/ADM: squared distances, radius = (k+1)-th smallest incl. self, ≤ test."""
    d_rr, d_ss = cdist(ref, ref, "sqeuclidean"), cdist(samples, samples, "sqeuclidean")
    r_ref, r_smp = np.sort(d_rr, axis=1)[:, k], np.sort(d_ss, axis=1)[:, k]
    d_sr = cdist(samples, ref, "sqeuclidean")
    precision = np.mean((d_sr <= r_ref[None, :]).any(axis=1))
    recall = np.mean((d_sr.T <= r_smp[None, :]).any(axis=1))
    return precision, recall, r_ref, r_smp


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_precision_recall_matches_brute_force(dtype):
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((230, 24))
    samples = rng.standard_normal((190, 24)) * 1.2 + 0.3
    p0, r0, rad_ref, _ = _direct_precision_recall(ref, samples, 3)
    assert 0.05 < p0 < 0.95 and 0.05 < r0 < 0.95  # a non-trivial case
    t = lambda a: torch.from_numpy(a)
    # Small blocks so that rows and columns both span several blocks.
    p, r = precision_recall(t(ref), t(samples), k=3, row_block=64, col_block=50, dtype=dtype)
    assert (p, r) == (p0, r0)
    radii = manifold_radii(t(ref), 3, row_block=64, col_block=50, dtype=dtype).numpy()
    np.testing.assert_allclose(radii, rad_ref, rtol=1e-4 if dtype == torch.float32 else 1e-10)


def test_precision_recall_block_size_does_not_change_the_answer():
    rng = np.random.default_rng(6)
    ref, smp = torch.from_numpy(rng.standard_normal((150, 8))), torch.from_numpy(rng.standard_normal((120, 8)))
    answers = {precision_recall(ref, smp, row_block=b, col_block=b, dtype=torch.float64) for b in (7, 32, 1000)}
    assert len(answers) == 1


def test_identical_sets_have_full_precision_and_recall():
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((50, 5)))
    assert precision_recall(x, x.clone(), dtype=torch.float64) == (1.0, 1.0)


def test_precision_recall_input_errors():
    with pytest.raises(ValueError, match="different feature extractors"):
        precision_recall(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="at least 4"):
        manifold_radii(torch.zeros(3, 2), k=3)
