"""Statistics helpers against scipy and hand computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from coloc_ray.analysis import stats as cs
from coloc_ray.errors import UserError


def test_paper_p_from_r_matches_t_distribution():
    # Paper: r_s = -0.735 over 32 layers -> p = 1.66e-6 (t with 30 dof, as scipy.spearmanr does).
    p = cs.p_from_r(-0.735, 32)
    assert p == pytest.approx(1.66e-6, rel=5e-3)
    t = -0.735 * np.sqrt(30 / (1 - 0.735 ** 2))
    assert p == pytest.approx(2 * stats.t.cdf(t, 30), rel=1e-12)


def test_p_from_r_agrees_with_scipy_spearman():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=20), rng.normal(size=20)
    res = stats.spearmanr(x, y)
    assert cs.p_from_r(res.statistic, 20) == pytest.approx(res.pvalue, rel=1e-9)
    assert cs.spearman(x, y) == pytest.approx((res.statistic, res.pvalue))


def test_monotone_pairs_give_plus_minus_one():
    x = np.arange(12.0)
    assert cs.spearman(x, np.exp(x))[0] == pytest.approx(1.0)
    assert cs.spearman(x, -x ** 3)[0] == pytest.approx(-1.0)


def test_permutation_p_reproducible_and_matches_exact_enumeration():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(size=7)
    p1, p2 = cs.permutation_p(x, y, n_perm=3000, seed=5), cs.permutation_p(x, y, n_perm=3000, seed=5)
    assert p1 == p2
    # Independent exact null: all 7! re-pairings, two-sided on |r|.
    obs = abs(stats.spearmanr(x, y).statistic)
    null = [abs(stats.spearmanr(x, y[list(perm)]).statistic) for perm in itertools.permutations(range(7))]
    exact = np.mean(np.array(null) >= obs - 1e-12)
    assert p1 == pytest.approx(exact, abs=0.03)
    # n_perm >= 7! makes scipy enumerate: equal to the exact value.
    assert cs.permutation_p(x, y, n_perm=6000, seed=1) == pytest.approx(exact, abs=1e-9)


def test_permutation_p_tracks_t_test_for_moderate_r():
    rng = np.random.default_rng(11)
    x = rng.normal(size=32)
    y = 0.35 * x + rng.normal(size=32)
    p_t = stats.spearmanr(x, y).pvalue
    assert cs.permutation_p(x, y, n_perm=20000, seed=0) == pytest.approx(p_t, abs=0.02)


def test_partial_spearman_matches_formula_and_removes_depth():
    rng = np.random.default_rng(42)
    depth = np.arange(32.0)
    s = depth + rng.normal(0, 4, 32)
    i = depth + rng.normal(0, 4, 32)
    raw = stats.spearmanr(s, i).statistic
    r, p = cs.partial_spearman(s, i)
    # Independent reference: first-order partial correlation formula on Spearman correlations.
    rxy, rxz, ryz = (stats.spearmanr(a, b).statistic for a, b in ((s, i), (s, depth), (i, depth)))
    ref = (rxy - rxz * ryz) / np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
    assert r == pytest.approx(ref, abs=1e-10)
    assert raw > 0.7 and abs(r) < 0.35
    t = ref * np.sqrt(29 / (1 - ref ** 2))
    assert p == pytest.approx(2 * stats.t.sf(abs(t), 29), rel=1e-9)


def test_circular_shift_p_by_hand():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=10), rng.normal(size=10)
    obs = abs(stats.spearmanr(x, y).statistic)
    hits = sum(abs(stats.spearmanr(x, np.roll(y, k)).statistic) >= obs - 1e-12 for k in range(1, 10))
    assert cs.circular_shift_p(x, y) == pytest.approx((1 + hits) / 10)
    assert cs.circular_shift_p(x, x) == pytest.approx(0.1)  # perfect alignment beats every shift


def test_bootstrap_ci_matches_scipy_and_covers_mean():
    rng = np.random.default_rng(2)
    items = rng.integers(0, 2, 300)
    est, lo, hi = cs.bootstrap_ci(items, n=2000, seed=4)
    ref = stats.bootstrap((items.astype(float),), np.mean, n_resamples=2000, method="percentile",
                          rng=np.random.default_rng(4)).confidence_interval
    assert est == pytest.approx(items.mean())
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)
    se = items.std() / np.sqrt(items.size)  # normal approximation as a rough second reference
    assert lo == pytest.approx(items.mean() - 1.96 * se, abs=0.015)
    assert cs.bootstrap_ci([1, 1, 1]) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_ci_is_paired():
    rng = np.random.default_rng(3)
    base = rng.normal(size=200)
    a, b = base + 0.1, base  # strongly paired: every difference is 0.1 +- tiny noise
    a = a + rng.normal(0, 0.01, 200)
    est, lo, hi = cs.paired_bootstrap_ci(a, b, n=2000, seed=0)
    assert est == pytest.approx(np.mean(a - b))
    assert 0.09 < lo < est < hi < 0.11  # an unpaired interval would be ~ +-0.2 wide
    ref = stats.bootstrap((a - b,), np.mean, n_resamples=2000, method="percentile",
                          rng=np.random.default_rng(0)).confidence_interval
    assert (hi - lo) == pytest.approx(ref.high - ref.low, rel=0.25)
    with pytest.raises(UserError, match="pair the same items"):
        cs.paired_bootstrap_ci([1, 0], [1, 0, 1])


def test_empirical_p_plus_one():
    null = [0.1, 0.2, 0.3, 0.4]
    assert cs.empirical_p(0.35, null) == pytest.approx((1 + 1) / 5)
    assert cs.empirical_p(0.5, null) == pytest.approx(1 / 5)
    assert cs.empirical_p(0.05, null, alternative="less") == pytest.approx(1 / 5)
    assert cs.empirical_p(0.05, null, alternative="two-sided") == pytest.approx(2 / 5)
    with pytest.raises(UserError):
        cs.empirical_p(0.5, [])
    with pytest.raises(UserError, match="alternative"):
        cs.empirical_p(0.5, null, alternative="bigger")


def test_profile_errors():
    with pytest.raises(UserError, match="non-finite"):
        cs.as_profile([1.0, float("nan")], "S")
    with pytest.raises(UserError):
        cs.as_profile([], "S")
    with pytest.raises(UserError):
        cs.as_profile(["a", "b"], "S")
