"""Intervals for arm differences with training runs as the unit of replication (METHOD 8).

Which model and why. Every run of every arm is scored on the same items (one evaluation seed), so
a run's per-item scores form a runs x items table, and runs and items are *crossed* random
factors. The interval for an arm difference is the one of a crossed random-effects model
    x[r, i] = mu_arm + u_r + v_i + w_arm,i + e_r,i
(u: training-run effect, v: item difficulty, shared by every arm and cancelling in a difference,
w: arm-by-item interaction, e: residual), with the variance components estimated by the method
of moments and a t interval on Satterthwaite degrees of freedom:
    Var(diff) = s2_run * (1/n_a + 1/n_b) + s2_w / m
where s2_run is the pooled within-arm variance of the run means (it already holds u and e/m) and
s2_w = var_i(d_i) - s2_e * (1/n_a + 1/n_b) removes from the item spread of d_i = mean_a x[., i] -
mean_b x[., i] the residual noise that s2_run already counts.
Why not a (hierarchical) bootstrap: with one or two runs per arm, which is what studies have,
resampling runs sees no run variance (one run) or scales it by (n - 1) / n (two runs: half), and
resampling runs and items together counts the residual twice; both are off by a factor that
depends on the design. The moment estimates are unbiased at any design and the t quantile pays
for the few runs. The false-positive rate and the power are checked by simulation in
tests/analysis/test_arm_intervals.py (designs 1 x 10 and 2 x 5, training x control seeds).
With a single run in an arm, its run variance is borrowed from the arms with replicates (D's
control runs: the same fine-tune, other layers), and the result says so (``run_variance_from``).
D's run spread also holds the choice of its random set R, which A does not have: borrowing it
errs on the wide side. Runs that share a training seed are treated as independent runs.
The base model is one deterministic evaluation: no run variance of its own (``b_is_base``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _matrix(runs: Sequence[dict], metric: str, ids: list[str], cache: dict | None = None) -> np.ndarray:
    """Runs x items scores on ``ids``; ``cache`` (by run identity) keeps a run's row from being built twice."""
    from operator import itemgetter

    get = itemgetter(*ids)
    rows = []
    for r in runs:
        key = id(r)
        if cache is None or key not in cache:
            row = np.atleast_1d(np.asarray(get(r["items"][metric]), dtype=np.float64))
            if cache is None:
                rows.append(row)
                continue
            cache[key] = row
        rows.append(cache[key])
    return np.stack(rows)


#: Item-level pairing needs the runs to share (nearly) all their items; below this share of every run's
#: items the comparison uses run means only (runs scored on different items, e.g. different eval seeds).
MIN_SHARED = 0.9


def _common_items(runs: Sequence[dict], metric: str) -> list[str]:
    sets = [set((r.get("items") or {}).get(metric) or ()) for r in runs]
    if not sets or not all(sets):
        return []
    common = set.intersection(*sets)
    return sorted(common) if all(len(common) >= MIN_SHARED * len(s) for s in sets) else []


def _run_variance(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Pooled within-group variance of run means and its degrees of freedom (0, 0 if no replicates)."""
    ss, df = 0.0, 0
    for g in groups:
        g = np.asarray(g, dtype=np.float64)
        if g.size > 1:
            ss += float(((g - g.mean()) ** 2).sum())
            df += g.size - 1
    return (ss / df, df) if df else (0.0, 0)


def _residual_variance(mats: Sequence[np.ndarray]) -> float:
    """Run x item residual variance s2_e pooled over arms with >= 2 runs (two-way ANOVA without replication)."""
    ss, df = 0.0, 0
    for x in mats:
        n, m = x.shape
        if n < 2 or m < 2:
            continue
        res = x - x.mean(axis=0, keepdims=True) - x.mean(axis=1, keepdims=True) + x.mean()
        ss += float((res ** 2).sum())
        df += (n - 1) * (m - 1)
    return ss / df if df else 0.0


def _t_result(diff: float, terms: Sequence[tuple[float, float]], level: float = 0.95) -> dict:
    """diff with a t interval; ``terms`` = (variance, dof) parts of Var(diff), combined by Satterthwaite."""
    from scipy import stats

    var = float(sum(v for v, _ in terms))
    if var <= 0.0:
        if diff == 0.0:  # every run ties on every item: a point, and nothing to reject
            return {"diff": diff, "se": 0.0, "df": None, "ci_low": diff, "ci_high": diff, "p": 1.0}
        # a difference with no observed spread anywhere (e.g. replicate runs that happen to agree on
        # every item): no variance estimate, so no interval and no p, rather than a false certainty
        return {"diff": diff, "se": None, "df": None, "ci_low": None, "ci_high": None, "p": None}
    denom = sum(v * v / d for v, d in terms if v > 0 and d > 0)
    df = var * var / denom if denom > 0 else float("inf")
    se = float(np.sqrt(var))
    q = float(stats.t.ppf(0.5 + level / 2, df))
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return {"diff": diff, "se": se, "df": float(df) if np.isfinite(df) else None,  # None: normal limit
            "ci_low": diff - q * se, "ci_high": diff + q * se, "p": p}


def _components(a_runs, b_runs, metric: str, pool: Sequence[Sequence[dict]], b_is_base: bool) -> dict | None:
    """Point difference and variance parts of one metric (see the block comment above)."""
    a = [r for r in a_runs if metric in r["scores"]]
    b = [r for r in b_runs if metric in r["scores"]]
    if not a or not b:
        return None
    pool = [[r for r in g if metric in r["scores"]] for g in pool]
    s2_run, df_run = _run_variance([[r["scores"][metric] for r in g] for g in pool])
    inv_b = 0.0 if b_is_base else 1.0 / len(b)  # the base model is one deterministic evaluation
    ids = _common_items([*a, *b, *(r for g in pool for r in g)], metric)
    out = {"n_a": len(a), "n_b": len(b), "run_df": df_run, "n_items": len(ids)}
    if ids:
        cache: dict = {}
        xa, xb = _matrix(a, metric, ids, cache), _matrix(b, metric, ids, cache)
        d = xa.mean(axis=0) - xb.mean(axis=0)
        out["diff"] = float(d.mean())
        s2_e = _residual_variance([_matrix(g, metric, ids, cache) for g in pool if g])
        # Replicate runs whose means tie exactly (two or three runs on a few items do, by chance) would read
        # as certainty; a run mean carries at least its items' residual noise (E[s2_run] = s2_u + s2_e / m), so
        # a zero is replaced by s2_e / m. Only a zero: flooring every estimate at s2_e / m biases the variance
        # up (simulated 1 x 5 design: 1 % false positives instead of 5 %).
        if df_run and s2_run == 0.0:
            s2_run = s2_e / len(ids)
        s2_w = max(0.0, float(d.var(ddof=1)) - s2_e * (1.0 / len(a) + inv_b)) if d.size > 1 else 0.0
        out["item_term"] = (s2_w / d.size, d.size - 1)
        if not df_run:  # no replicate run anywhere: the item spread is all there is (it misses run noise)
            out["item_term"] = (float(d.var(ddof=1)) / d.size if d.size > 1 else 0.0, d.size - 1)
    else:  # no shared per-item results: run means only (run-level mode)
        out["diff"] = float(np.mean([r["scores"][metric] for r in a]) - np.mean([r["scores"][metric] for r in b]))
        out["item_term"] = (0.0, 0)
    out["run_term"] = (s2_run * (1.0 / len(a) + inv_b), df_run)
    return out


def _describe(c: dict, a_name: str, pool_names: Sequence[str]) -> dict:
    """What the interval rests on, in words the report can print."""
    if not c["run_df"]:
        return {"interval": "items only: no arm has replicate runs, so run-to-run variance is unknown "
                            "and this interval is too narrow", "run_variance_from": None}
    borrowed = c["n_a"] == 1
    src = "+".join(pool_names)
    return {"interval": ("runs and items (crossed random effects)" if c["n_items"] else
                         "runs only (no per-item results shared by every run)"),
            "run_variance_from": src + (f" (borrowed for {a_name}'s single run)" if borrowed else "")}


def compare_arms(a_runs: Sequence[dict], b_runs: Sequence[dict], metrics: Sequence[str],
                 pool: dict[str, Sequence[dict]], b_is_base: bool = False, a_name: str = "A",
                 level: float = 0.95) -> dict:
    """Per metric: mean(a) - mean(b) with a run-level 95 % t interval and two-sided p.

    Args:
        a_runs, b_runs: the two arms' runs (``b_runs`` = [base] with ``b_is_base``).
        metrics: benchmark names (or ``heldout_loss``).
        pool: arms whose run-to-run spread estimates the run variance, e.g. {"A": a, "D": d}.
        b_is_base: b is the base model, a single deterministic evaluation (no run variance of its own).

    Returns:
        {metric: {diff, ci_low, ci_high, p, se, df, n_a, n_b, n_items, interval, run_variance_from}}.
    """
    out = {}
    for m in metrics:
        c = _components(a_runs, b_runs, m, list(pool.values()), b_is_base)
        if c is None:
            out[m] = {"diff": None, "ci_low": None, "ci_high": None, "p": None, "n_a": 0, "n_b": 0, "n_items": 0}
            continue
        res = _t_result(c["diff"], [c["run_term"], c["item_term"]], level)
        out[m] = {**res, "n_a": c["n_a"], "n_b": c["n_b"], "n_items": c["n_items"],
                  **_describe(c, a_name, [k for k, g in pool.items() if len(g) > 1])}
    return out


def compare_average(a_runs: Sequence[dict], b_runs: Sequence[dict], benchmarks: Sequence[str],
                    pool: dict[str, Sequence[dict]], b_is_base: bool = False, level: float = 0.95) -> dict:
    """The average over ``benchmarks`` of mean(a) - mean(b): one claim, one interval.

    Runs enter only with every benchmark. The run term uses each run's benchmark average (so the
    correlation of a run's benchmarks is kept); the item terms of the benchmarks add (items of
    different benchmarks are independent), each divided by B^2.
    """
    def complete(rs):
        return [{**r, "scores": {**r["scores"], "_avg": float(np.mean([r["scores"][b] for b in benchmarks]))}}
                for r in rs if all(b in r["scores"] for b in benchmarks)]

    a, b = complete(a_runs), complete(b_runs)
    if not benchmarks or not a or not b:
        return {"diff": None, "ci_low": None, "ci_high": None, "p": None, "n_a": len(a), "n_b": len(b)}
    pools = [complete(g) for g in pool.values()]
    avg = _components(a, b, "_avg", pools, b_is_base)
    per = [_components(a, b, bench, pools, b_is_base) for bench in benchmarks]
    nb = len(benchmarks)
    diff = avg["diff"]  # of the runs' benchmark averages, as Table 4's Avg
    terms = [avg["run_term"]] + [(c["item_term"][0] / nb ** 2, c["item_term"][1]) for c in per]
    res = _t_result(diff, terms, level)
    return {**res, "n_a": len(a), "n_b": len(b), "benchmarks": list(benchmarks),
            **_describe({**avg, "n_items": sum(c["n_items"] for c in per)}, "A",
                        [k for k, g in zip(pool, pools) if len(g) > 1])}


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm step-down adjusted p-values (family = the non-None entries): max over j <= i of
    min(1, (m - j + 1) p_(j)) in ascending order of p."""
    keys = sorted((k for k, p in pvalues.items() if p is not None), key=lambda k: pvalues[k])
    m, out, running = len(keys), {k: None for k in pvalues}, 0.0
    for j, k in enumerate(keys):
        running = max(running, min(1.0, (m - j) * pvalues[k]))
        out[k] = running
    return out
