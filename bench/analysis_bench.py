"""Analysis-stage timings, each against a baseline in the same run.

1. permutation p of Spearman r: scipy.stats.permutation_test (vectorized, what the code uses)
   vs a plain loop of scipy.stats.spearmanr over the same number of re-pairings;
2. paired bootstrap CI: scipy.stats.bootstrap (vectorized, batched) vs a Python loop of resamples;
3. the whole analyze() record at the paper's size (L = 32, 10,000 permutations).

Run: .venv/bin/python bench/analysis_bench.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy import stats

from coloc_ray.analysis.colocalization import analyze
from coloc_ray.analysis.stats import paired_bootstrap_ci, permutation_p


def _time(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive_permutation_p(x, y, n_perm, seed):
    rng = np.random.default_rng(seed)
    obs = abs(stats.spearmanr(x, y).statistic)
    hits = sum(abs(stats.spearmanr(rng.permutation(x), y).statistic) >= obs - 1e-12 for _ in range(n_perm))
    return (1 + hits) / (n_perm + 1)


def naive_paired_bootstrap(a, b, n, seed):
    rng = np.random.default_rng(seed)
    d = a - b
    means = [d[rng.integers(0, d.size, d.size)].mean() for _ in range(n)]
    return np.percentile(means, [2.5, 97.5])


def main() -> None:
    rng = np.random.default_rng(0)
    L, n_perm = 32, 2000
    x, y = rng.normal(size=L), rng.normal(size=L)
    t_vec, p_vec = _time(lambda: permutation_p(x, y, n_perm=n_perm, seed=0))
    t_loop, p_loop = _time(lambda: naive_permutation_p(x, y, n_perm, 0), repeat=1)
    print(f"permutation p, L={L}, {n_perm} perms: vectorized {t_vec * 1e3:.1f} ms (p={p_vec:.3f}) | "
          f"loop {t_loop * 1e3:.0f} ms (p={p_loop:.3f}) | speed-up x{t_loop / t_vec:.0f}")
    items, n_boot = 14000, 2000
    a, b = rng.integers(0, 2, items).astype(float), rng.integers(0, 2, items).astype(float)
    t_vec, ci = _time(lambda: paired_bootstrap_ci(a, b, n=n_boot, seed=0))
    t_loop, ci_loop = _time(lambda: naive_paired_bootstrap(a, b, n_boot, 0), repeat=1)
    print(f"paired bootstrap, {items} items, {n_boot} resamples: scipy {t_vec:.2f} s "
          f"[{ci.low:+.4f}, {ci.high:+.4f}] | loop {t_loop:.2f} s [{ci_loop[0]:+.4f}, {ci_loop[1]:+.4f}] | "
          f"ratio x{t_loop / t_vec:.2f}")
    s, r = np.exp(np.arange(L) / 5 + rng.normal(0, 0.8, L)), np.exp(-np.arange(L) / 6 + rng.normal(0, 0.8, L))
    t_an, _ = _time(lambda: analyze(s, r, top_k=10, n_perm=10000, seed=0))
    print(f"analyze(), L={L}, 10000 perms: {t_an * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
