"""Generic statistics on top of scipy: rank correlations, permutation nulls, bootstrap CIs.

Everything here is plain numpy/scipy (STYLE 6: the library does the statistics; this module only
pins the choices METHOD 3 and 8 make). Errors a user can cause raise :class:`UserError`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from coloc_ray.errors import UserError

#: Resamples per vectorized scipy call. Small batches (~1M floats, 8 MB) are fastest here (cache) and
#: keep memory flat at any n (MMLU has 14k items; pooled over 6 run pairs, 84k).
_BATCH = 500


def _batch(n_items: int) -> int:
    return max(10, min(_BATCH, 1_000_000 // max(1, n_items)))


class CI(NamedTuple):
    """A point estimate with a two-sided 95 % confidence interval (unpacks as ``est, lo, hi``)."""

    estimate: float
    low: float
    high: float


def as_profile(values: Sequence[float], name: str) -> np.ndarray:
    """A 1-D float64 array of finite values, or a UserError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UserError(f"{name}: expected a list of numbers ({e}); fix the probe output") from None
    if arr.ndim != 1 or arr.size == 0:
        raise UserError(f"{name}: expected a non-empty 1-D list of numbers, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise UserError(f"{name}: non-finite value at index {bad.tolist()[:5]}; re-run the probe "
                        "or drop those layers")
    return arr


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman r and its two-sided p (scipy: t distribution with n-2 dof)."""
    from scipy import stats

    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def p_from_r(r: float, n: int, dof_lost: int = 2) -> float:
    """Two-sided p of a correlation r over n points via t = r sqrt(dof / (1 - r^2)), dof = n - dof_lost.

    ``dof_lost=2`` is what :func:`scipy.stats.spearmanr` does; a first-order partial correlation
    spends one more degree of freedom (``dof_lost=3``).
    """
    from scipy import stats

    dof = n - dof_lost
    if dof <= 0:
        raise UserError(f"correlation over {n} points leaves {dof} degrees of freedom; need more layers")
    if abs(r) >= 1.0:
        return 0.0
    t = r * np.sqrt(dof / (1.0 - r * r))
    return float(2.0 * stats.t.sf(abs(t), dof))


def _abs_corr_with(y: np.ndarray):
    # |Pearson| with a fixed y along the last axis; on ranks this is |Spearman|.
    yc = y - y.mean()

    def stat(x, axis=-1):
        xc = x - x.mean(axis=axis, keepdims=True)
        num = (xc * yc).sum(axis=axis)
        return np.abs(num / np.sqrt((xc * xc).sum(axis=axis) * float(yc @ yc)))

    return stat


def permutation_p(x: np.ndarray, y: np.ndarray, n_perm: int = 10000, seed: int = 0) -> float:
    """Seeded permutation p of Spearman r: two-sided on |r|, random re-pairings, +1 corrected.

    Uses :func:`scipy.stats.permutation_test` (``permutation_type="pairings"``) on the ranks, so
    permuting ranks equals ranking the permuted data. Small n with ``n_perm >= n!`` is exact.
    """
    from scipy import stats

    rx, ry = stats.rankdata(x), stats.rankdata(y)
    # Only x is re-ordered (y is fixed in the statistic): n! distinct pairings, so n_perm >= n! is exact.
    res = stats.permutation_test((rx,), _abs_corr_with(ry), permutation_type="pairings",
                                 vectorized=True, n_resamples=n_perm, batch=_BATCH,
                                 alternative="greater", rng=np.random.default_rng(seed))
    return float(res.pvalue)


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None) -> tuple[float, float]:
    """Spearman partial correlation of x and y given z (default z = index, i.e. layer depth).

    Rank x, y and z; regress rank(z) (with intercept) out of rank(x) and rank(y) by least squares;
    the Pearson r of the two residual vectors is the partial r. Its p uses the t distribution
    with n - 3 degrees of freedom (one more than a plain correlation, for the controlled variable).
    If a profile's ranks are exactly a linear function of rank(z) (e.g. strictly rising with depth),
    the partial correlation is undefined and (0.0, 1.0) is returned: no relation beyond depth.
    """
    from scipy import stats

    n = len(x)
    z = np.arange(n, dtype=np.float64) if z is None else np.asarray(z, dtype=np.float64)
    design = np.column_stack([np.ones(n), stats.rankdata(z)])
    resid = []
    for v in (x, y):
        rv = stats.rankdata(v)
        coef, *_ = np.linalg.lstsq(design, rv, rcond=None)
        resid.append(rv - design @ coef)
    if min(float(np.dot(r, r)) for r in resid) < 1e-18:
        # A profile whose ranks are exactly the depth order has nothing left once depth is
        # known: report "no relation beyond depth" (r = 0, p = 1) rather than failing the study.
        return 0.0, 1.0
    r = float(stats.pearsonr(resid[0], resid[1]).statistic)
    return r, p_from_r(r, n, dof_lost=3)


def circular_shift_p(x: np.ndarray, y: np.ndarray) -> float:
    """Circular-shift p of Spearman r: all L-1 nonzero circular shifts of y against x. Not a depth
    control: for two profiles that both trend with depth it returns its floor 1/L (see
    :func:`depth_surrogate_p` for one that is).

    Two-sided on |r|; the observed alignment counts as one member of the null (+1 correction),
    so p = (1 + #{shifts with |r_s| >= |r_obs|}) / L and the smallest attainable p is 1/L.
    A shift keeps each profile's own smoothness but breaks a shared monotone trend at the wrap
    point, so two profiles that merely both trend with depth still get a small p here; the
    partial correlation (:func:`partial_spearman`) is the stricter depth control, and the
    interpretation asks for both.
    """
    n = len(x)
    observed = abs(spearman(x, y)[0])
    null = np.array([abs(spearman(x, np.roll(y, s))[0]) for s in range(1, n)])
    hits = int(np.count_nonzero(null >= observed - 1e-12 * max(1.0, observed)))
    return (1 + hits) / n


def _depth_residuals(v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Ranks of v with a least-squares line in rank(z) removed (the residuals the partial r correlates)."""
    from scipy import stats

    design = np.column_stack([np.ones(z.size), stats.rankdata(z)])
    rv = stats.rankdata(v)
    coef, *_ = np.linalg.lstsq(design, rv, rcond=None)
    return rv - design @ coef


def phase_surrogates(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` phase-randomized surrogates of a 1-D series (rows): the same amplitude spectrum, hence the
    same periodogram autocorrelation, with uniform random Fourier phases (Theiler et al. 1992). The
    mean (DC term) and, for even length, the Nyquist term are kept as they are."""
    f = np.fft.rfft(x - x.mean())
    phases = rng.uniform(0.0, 2 * np.pi, size=(n, f.size))
    phases[:, 0] = 0.0
    if x.size % 2 == 0:
        phases[:, -1] = 0.0
    return np.fft.irfft(np.abs(f) * np.exp(1j * (np.angle(f) + phases)), n=x.size) + x.mean()


def depth_surrogate_p(x: np.ndarray, y: np.ndarray, n_surr: int = 2000, seed: int = 0) -> float:
    """A depth control that keeps each profile's autocorrelation (METHOD 3).

    Statistic: |partial Spearman r| of x and y given depth (the correlation of their rank residuals
    after a line in depth). Null: the same statistic with y's residual replaced by phase-randomized
    surrogates of itself, which keep its autocorrelation. Why: neighbouring layers are alike, so the
    residuals are autocorrelated and the t-based partial p, which assumes independent layers, is too
    small; a circular shift keeps the autocorrelation but not the depth trend. Two-sided, +1 corrected.
    Its false-positive rate on independent depth-trending profiles is checked by simulation in
    tests/analysis/test_depth_null.py.
    """
    z = np.arange(x.size, dtype=np.float64)
    rx, ry = _depth_residuals(x, z), _depth_residuals(y, z)
    if min(float(rx @ rx), float(ry @ ry)) < 1e-18:
        return 1.0  # a profile that is exactly its depth order: nothing beyond depth to relate
    stat = _abs_corr_with(rx)
    observed = float(stat(ry[None, :])[0])
    null = stat(phase_surrogates(ry, n_surr, np.random.default_rng(seed)))
    return (1 + int(np.count_nonzero(null >= observed - 1e-12))) / (n_surr + 1)


def _items(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise UserError(f"{name}: no items to bootstrap; check the per-item results")
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{name}: non-finite item score; check the per-item results")
    return arr


def _mean(*samples, axis=-1):
    return samples[0].mean(axis=axis)


def bootstrap_ci(items: Sequence[float], n: int = 10000, seed: int = 0) -> CI:
    """Mean of per-item scores (0/1 or graded) with a 95 % percentile bootstrap CI (scipy)."""
    from scipy import stats

    arr = _items(items, "bootstrap_ci")
    est = float(arr.mean())
    if np.ptp(arr) == 0:  # every resample has the same mean: the interval is a point
        return CI(est, est, est)
    res = stats.bootstrap((arr,), _mean, n_resamples=n, batch=_batch(arr.size), vectorized=True,
                          method="percentile", rng=np.random.default_rng(seed))
    return CI(est, float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired_bootstrap_ci(a_items: Sequence[float], b_items: Sequence[float], n: int = 10000,
                        seed: int = 0) -> CI:
    """mean(a) - mean(b) on the same items, with a 95 % paired percentile bootstrap CI (scipy).

    ``a_items[i]`` and ``b_items[i]`` must be the same item; items are resampled as pairs.
    """
    from scipy import stats

    a, b = _items(a_items, "paired_bootstrap_ci a"), _items(b_items, "paired_bootstrap_ci b")
    if a.shape != b.shape:
        raise UserError(f"paired_bootstrap_ci: {a.size} vs {b.size} items; pair the same items")
    d = a - b
    est = float(d.mean())
    if np.ptp(d) == 0:
        return CI(est, est, est)
    # Resampling item pairs and taking mean(a*) - mean(b*) is resampling d = a - b and taking its
    # mean: one array instead of two, ~2x faster than scipy's paired=True at the same resamples.
    res = stats.bootstrap((d,), _mean, n_resamples=n, batch=_batch(d.size), vectorized=True,
                          method="percentile", rng=np.random.default_rng(seed))
    return CI(est, float(res.confidence_interval.low), float(res.confidence_interval.high))


def empirical_p(value: float, null: Sequence[float], alternative: str = "greater") -> float:
    """Empirical p of ``value`` against a sampled null, +1 corrected: (1 + #as-extreme) / (n + 1).

    ``greater``: null >= value; ``less``: null <= value; ``two-sided``: twice the smaller, capped at 1.
    """
    arr = _items(null, "empirical_p null")
    greater = (1 + int(np.count_nonzero(arr >= value))) / (arr.size + 1)
    less = (1 + int(np.count_nonzero(arr <= value))) / (arr.size + 1)
    if alternative == "greater":
        return greater
    if alternative == "less":
        return less
    if alternative == "two-sided":
        return min(1.0, 2 * min(greater, less))
    raise UserError(f"empirical_p: alternative={alternative!r}; use 'greater', 'less' or 'two-sided'")
