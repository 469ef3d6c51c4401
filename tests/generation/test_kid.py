"""KID (Bińkowski et al. 2018) against a direct O(n²) formula, its standard error against the
spread over independent repetitions, and its behaviour where FID's small-n bias dominates."""
import numpy as np
import pytest

from cnnkit.generation.fid import frechet_distance, kid_from_features, statistics
from cnnkit.utils import CnnkitError


def _direct_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (aᵀb/d + 1)³, pair by pair."""
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_the_direct_formula_and_its_jackknife():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)), rng.normal(0.3, 1.2, size=(30, 6))
    value, se = kid_from_features(x, y)  # 30 ≤ subset size: one subset, the whole data
    assert value == pytest.approx(_direct_kid(x, y), rel=1e-10)
    # the delete-one jackknife, recomputed from scratch (Arvesen 1969)
    without_x = np.array([_direct_kid(np.delete(x, i, 0), y) for i in range(30)])
    without_y = np.array([_direct_kid(x, np.delete(y, j, 0)) for j in range(30)])
    variance = 29 / 30 * ((without_x - without_x.mean()) ** 2).sum() \
        + 29 / 30 * ((without_y - without_y.mean()) ** 2).sum()
    assert se == pytest.approx(np.sqrt(variance), rel=1e-8)
    assert kid_from_features(y, x)[0] == pytest.approx(value, rel=1e-10)  # symmetric


def test_kid_over_subsets_is_the_mean_of_subset_estimates():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 5)), rng.normal(0.5, 1.0, size=(60, 5))
    value, _ = kid_from_features(x, y, subsets=7, subset_size=20, seed=3)
    draws = np.random.default_rng(3)
    expected = np.mean([_direct_kid(x[draws.choice(80, 20, replace=False)],
                                    y[draws.choice(60, 20, replace=False)]) for _ in range(7)])
    assert value == pytest.approx(expected, rel=1e-10)


def test_kid_is_unbiased_where_fid_is_not():
    """Two samples of one distribution: KID ≈ 0 (within its error, sometimes negative), while
    FID at small n sits far above 0 and falls as n grows. The standard error is of the size of
    the spread of KID over independent repetitions."""
    rng = np.random.default_rng(2)
    d = 32
    kids, ses, fids = [], [], []
    for _ in range(40):
        a, b = rng.normal(size=(2, 100, d))
        value, se = kid_from_features(a, b)
        kids.append(value)
        ses.append(se)
        fids.append(frechet_distance(*statistics(a), *statistics(b)))
    kids = np.array(kids)
    assert abs(kids.mean()) < 3 * kids.std() / np.sqrt(len(kids))  # unbiased: mean ≈ 0
    assert (kids < 0).any() and (kids > 0).any()
    # the jackknife error is of the size of the real spread; on identical distributions (a
    # degenerate U-statistic) it is known to err on the large side: 1.2-1.7x over 5 seeds
    assert 0.7 < np.mean(ses) / kids.std() < 2.5
    # FID of identical distributions, n = 100 in 32 dimensions: large, and its bias shrinks with n
    a, b = rng.normal(size=(2, 1000, d))
    assert min(fids) > 10 * np.mean(ses) and min(fids) > frechet_distance(*statistics(a),
                                                                           *statistics(b))
    # a real difference shows in KID by many standard errors
    shifted, se = kid_from_features(rng.normal(size=(100, d)), rng.normal(0.5, 1, size=(100, d)))
    assert shifted > 5 * se


def test_kid_errors():
    with pytest.raises(CnnkitError, match="at least 3"):
        kid_from_features(np.zeros((2, 4)), np.zeros((5, 4)))
    with pytest.raises(CnnkitError, match="equal D"):
        kid_from_features(np.zeros((5, 4)), np.zeros((5, 3)))
