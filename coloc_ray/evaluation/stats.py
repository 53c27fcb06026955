"""Scores and 95 % percentile-bootstrap CIs from per-item results (seeded, so a rerun gives the same CI).

The unstratified CI is :func:`coloc_ray.analysis.stats.bootstrap_ci` (scipy); only the stratified
(macro-mean, MGSM) bootstrap, which scipy does not offer, is implemented here.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def bootstrap_ci(correct, strata=None, *, n_resamples: int = 10000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(score, ci_low, ci_high) of per-item 0/1 results.

    Without ``strata`` the score is the plain mean and each resample draws n items with replacement.
    With ``strata`` (MGSM languages) the score is the mean over strata of the stratum means, and each
    resample draws within each stratum (a stratified bootstrap), so the CI is of that macro mean.
    """
    x = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    if strata is None:  # the plain percentile bootstrap: the one in coloc_ray.analysis.stats (scipy)
        from coloc_ray.analysis.stats import bootstrap_ci as plain_ci

        return tuple(plain_ci(x, n=n_resamples, seed=seed))
    rng = np.random.default_rng(seed)
    groups = [x[np.asarray(idx)] for idx in _group(strata).values()]
    score = float(np.mean([g.mean() for g in groups]))
    means = np.zeros((len(groups), n_resamples))
    for k, g in enumerate(groups):
        draws = rng.integers(0, g.size, size=(n_resamples, g.size))
        means[k] = g[draws].mean(axis=1)
    stat = means.mean(axis=0)
    lo, hi = np.quantile(stat, [0.025, 0.975])
    return score, float(lo), float(hi)


def _group(strata) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        out[str(s)].append(i)
    return dict(sorted(out.items()))


def summarize(items: list[dict], metric: str, stratum: str | None = None, macro: bool = False,
              seed: int = 0, n_resamples: int = 10000) -> dict:
    """``{score, ci_low, ci_high, n, metric}`` (+ per-stratum scores) of one benchmark's per-item rows."""
    correct = [bool(r["correct"]) for r in items]
    strata = [r.get(stratum) for r in items] if (stratum and macro) else None
    score, lo, hi = bootstrap_ci(correct, strata, n_resamples=n_resamples, seed=seed)
    out = {"score": score, "ci_low": lo, "ci_high": hi, "n": len(items), "metric": metric}
    if stratum and any(stratum in r for r in items):
        out["per_" + stratum] = {k: float(np.mean([correct[i] for i in idx]))
                                 for k, idx in _group([r.get(stratum) for r in items]).items()}
    if items and "acc_norm" in items[0]:
        out["acc_norm"] = float(np.mean([bool(r["acc_norm"]) for r in items]))
    from coloc_ray.evaluation.math_equiv import METRICS  # MATH: lm-eval's equivalence checks beside boxed EM

    for key, label in METRICS.items():
        if any(key in r for r in items):
            vals = [bool(r[key]) for r in items if r.get(key) is not None]  # None: not scored (see math_equiv)
            s, lo, hi = bootstrap_ci(vals, n_resamples=n_resamples, seed=seed) if vals else (None, None, None)
            out[key] = {"score": s, "ci_low": lo, "ci_high": hi, "n": len(vals), "metric": label}
    return out
