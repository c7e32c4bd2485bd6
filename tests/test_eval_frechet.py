"""Fréchet distance against closed forms and against a scipy.linalg.sqrtm computation."""
import numpy as np
import pytest
import scipy.linalg

from dtr_scale.evaluation import FrechetDistanceError, frechet_distance


def _random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, 2 * d))
    return scale * (a @ a.T) / (2 * d) + 1e-3 * np.eye(d)


def _sqrtm_reference(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_diagonal_covariances_closed_form():
    # Diagonal Σ: d² = |Δμ|² + Σ_i (sqrt(a_i) − sqrt(b_i))².
    rng = np.random.default_rng(0)
    d = 50
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert abs(got - expected) <= 1e-10 * expected


def test_commuting_covariances_closed_form():
    # Σ1 = Q A Qᵀ, Σ2 = Q B Qᵀ share eigenvectors: same formula on the eigenvalues.
    rng = np.random.default_rng(1)
    d = 64
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.01, 9.0, d), rng.uniform(0.01, 9.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.standard_normal(d)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + 4.0 * d
    got = frechet_distance(mu, s1, mu + 2.0, s2)
    assert abs(got - expected) <= 1e-8 * expected


def test_scalar_gaussians():
    # 1-D: (μ1−μ2)² + (σ1−σ2)².
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-12)


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(2)
    s = _random_spd(rng, 100)
    mu = rng.standard_normal(100)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)


@pytest.mark.parametrize("d,seed", [(8, 3), (64, 4), (160, 5)])
def test_matches_scipy_sqrtm_on_random_statistics(d, seed):
    rng = np.random.default_rng(seed)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=2.5)
    mu1, mu2 = rng.standard_normal(d), 0.3 * rng.standard_normal(d)
    expected = _sqrtm_reference(mu1, s1, mu2, s2)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert abs(got - expected) <= 1e-6 * abs(expected)


def test_rank_deficient_covariance_matches_sqrtm():
    # Fewer samples than dimensions (a singular Σ) is the usual case for small evaluations.
    rng = np.random.default_rng(6)
    d = 40
    x1, x2 = rng.standard_normal((25, d)), rng.standard_normal((300, d)) + 0.1
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    mu1, mu2 = x1.mean(0), x2.mean(0)
    expected = _sqrtm_reference(mu1, s1, mu2, s2)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert abs(got - expected) <= 1e-6 * abs(expected)


def test_symmetric_eigensolver_is_not_applied_to_the_nonsymmetric_product():
    # eigvalsh(Σ1 Σ2) reads one triangle of a non-symmetric matrix and gets a wrong trace for
    # non-commuting Σ1, Σ2; frechet_distance must agree with sqrtm instead.
    rng = np.random.default_rng(7)
    d = 30
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=5.0)
    wrong_trace = np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ s2), 0, None)).sum()
    right_trace = np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2)))
    assert abs(wrong_trace - right_trace) > 1e-3  # the trap is real for these matrices
    mu = np.zeros(d)
    got = frechet_distance(mu, s1, mu, s2)
    assert got == pytest.approx(np.trace(s1) + np.trace(s2) - 2 * right_trace, rel=1e-7)


def test_bad_input_raises_clear_errors():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(FrechetDistanceError, match="different feature dimensions"):
        frechet_distance(mu, s, np.zeros(4), np.eye(4))
    with pytest.raises(FrechetDistanceError, match="sigma1 must be a 3x3"):
        frechet_distance(mu, np.eye(2), mu, s)
    with pytest.raises(FrechetDistanceError, match="NaN or inf"):
        frechet_distance(mu, np.full((3, 3), np.nan), mu, s)
