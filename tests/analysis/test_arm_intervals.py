"""Arm-vs-arm statistics (METHOD 8): calibration by simulation, and every number against scipy / a formula.

Simulated studies: A and D come from one process (item difficulty shared, a run-level logit shift per
training run, Bernoulli item outcomes); designs 1 x 10 and 2 x 5 (training x control seeds). Under the
null the 95 % CI of A - D must exclude 0 in about 5 % of studies; with a real effect it must keep power.
The old method (each A run paired with every D run of its training seed, item differences pooled and
bootstrapped as independent) is measured on the same studies to show what was wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from coloc_ray.analysis import ablation_stats as st
from coloc_ray.analysis import arm_intervals as ai

N_ITEMS = {"mmlu": 80, "arc_challenge": 60}


def _run(arm, cs, ts, p_items, rng):
    items = {b: {f"{b}/{i}": float(rng.random() < p) for i, p in enumerate(p_items[b])} for b in p_items}
    return {"trial_id": f"{arm}-{cs}-{ts}", "arm": arm, "control_seed": cs, "train_seed": ts,
            "scores": {b: float(np.mean(list(v.values()))) for b, v in items.items()}, "items": items}


def simulate(rng, n_train, n_ctrl, run_sd=0.15, effect=0.0):
    """One study: (A runs, D runs). ``effect`` is A's logit shift on every item."""
    difficulty = {b: rng.normal(0.0, 1.0, n) for b, n in N_ITEMS.items()}

    def runs(arm, shift, ctrl):
        out = []
        for t in range(n_train):
            for c in ctrl:
                u = rng.normal(0.0, run_sd)
                p = {b: 1 / (1 + np.exp(-(v + u + shift))) for b, v in difficulty.items()}
                out.append(_run(arm, c, t, p, rng))
        return out

    return runs("A", effect, [None]), runs("D", 0.0, list(range(100, 100 + n_ctrl)))


def _excludes_zero(r):
    return r["ci_low"] > 0 or r["ci_high"] < 0


def _rates(design, effect, n_sims, seed):
    """Share of studies whose CI excludes 0: A - D on MMLU, the two-benchmark average, and the
    reference: the exact pooled two-sample t test on MMLU run means (scipy), the best valid test
    when per-item results are ignored."""
    rng = np.random.default_rng(seed)
    hits = {"mmlu": 0, "avg": 0, "t_test": 0}
    for _ in range(n_sims):
        a, d = simulate(rng, *design, effect=effect)
        pool = {"A": a, "D": d}
        hits["mmlu"] += _excludes_zero(ai.compare_arms(a, d, ["mmlu"], pool)["mmlu"])
        hits["avg"] += _excludes_zero(ai.compare_average(a, d, list(N_ITEMS), pool))
        xa, xd = [r["scores"]["mmlu"] for r in a], [r["scores"]["mmlu"] for r in d]
        hits["t_test"] += stats.ttest_ind(xa, xd).pvalue < 0.05
    return {k: v / n_sims for k, v in hits.items()}


@pytest.mark.parametrize("design", [(1, 10), (2, 5)])
def test_a_minus_d_false_positive_rate_near_nominal(design):
    rates = _rates(design, effect=0.0, n_sims=400, seed=sum(design))
    # 400 studies: a 5 % rate has sd 1.1 %; the window allows ~2.5 sd either way.
    for k in ("mmlu", "avg"):
        assert 0.02 <= rates[k] <= 0.08, (design, k, rates)


@pytest.mark.parametrize("design", [(1, 10), (2, 5)])
def test_a_minus_d_keeps_power_with_a_real_effect(design):
    # +1 logit on every item of A, run sd 0.15: the interval must find it about as often as the exact
    # t test on run means does (with one A run that is ~77 %, with two ~97 %), and the average more often.
    rates = _rates(design, effect=1.0, n_sims=150, seed=7 + sum(design))
    assert rates["mmlu"] >= rates["t_test"] - 0.05 and rates["mmlu"] >= 0.65, rates
    assert rates["avg"] >= 0.85, rates


def _old_pooled_pairs_ci(a_runs, d_runs, bench, rng, n_boot=1000):
    """The replaced method: A paired with every D run of its training seed, items pooled over pairs."""
    diffs = []
    for a in a_runs:
        for d in d_runs:
            if a["train_seed"] == d["train_seed"]:
                ids = sorted(a["items"][bench])
                diffs += [a["items"][bench][k] - d["items"][bench][k] for k in ids]
    diffs = np.array(diffs)
    boot = diffs[rng.integers(0, diffs.size, (n_boot, diffs.size))].mean(axis=1)
    return np.percentile(boot, [2.5, 97.5])


def test_old_pooled_pair_bootstrap_was_anticonservative():
    """Documents the bug the run-level interval fixes: same studies, the old CI excludes 0 far too often."""
    rng, boot_rng = np.random.default_rng(11), np.random.default_rng(12)
    n_sims, old = 150, 0
    for _ in range(n_sims):
        a, d = simulate(rng, 1, 10)
        lo, hi = _old_pooled_pairs_ci(a, d, "mmlu", boot_rng)
        old += lo > 0 or hi < 0
    assert old / n_sims > 0.15


def test_run_level_mode_equals_pooled_two_sample_t():
    """Without per-item results the interval is the pooled-variance t on run means: scipy's ttest_ind."""
    rng = np.random.default_rng(3)
    a, d = simulate(rng, 2, 4, run_sd=0.3, effect=0.2)
    for r in a + d:
        r["items"] = {}
    res = ai.compare_arms(a, d, ["mmlu"], {"A": a, "D": d})["mmlu"]
    xa, xd = [r["scores"]["mmlu"] for r in a], [r["scores"]["mmlu"] for r in d]
    ref = stats.ttest_ind(xa, xd, equal_var=True)
    ci = ref.confidence_interval(0.95)
    assert res["diff"] == pytest.approx(np.mean(xa) - np.mean(xd))
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert res["df"] == pytest.approx(len(xa) + len(xd) - 2)
    assert res["interval"].startswith("runs only")


def test_item_mode_against_direct_variance_components():
    """With items: Var = s2_run (1/na + 1/nd) + max(0, var(d_i) - s2_e (1/na + 1/nd)) / m, Satterthwaite df."""
    rng = np.random.default_rng(5)
    a, d = simulate(rng, 2, 3, run_sd=0.2, effect=0.3)
    ids = sorted(a[0]["items"]["mmlu"])
    xa = np.array([[r["items"]["mmlu"][k] for k in ids] for r in a])
    xd = np.array([[r["items"]["mmlu"][k] for k in ids] for r in d])
    ma, md = xa.mean(1), xd.mean(1)
    s2_run = (((ma - ma.mean()) ** 2).sum() + ((md - md.mean()) ** 2).sum()) / (len(ma) + len(md) - 2)
    ss_e = 0.0
    for x in (xa, xd):  # two-way ANOVA residual, by loops
        for r in range(x.shape[0]):
            for i in range(x.shape[1]):
                ss_e += (x[r, i] - x[:, i].mean() - x[r].mean() + x.mean()) ** 2
    s2_e = ss_e / ((len(ma) - 1 + len(md) - 1) * (len(ids) - 1))
    assert s2_run > 0  # (an exact zero would be replaced by s2_e / m)
    dvec = xa.mean(0) - xd.mean(0)
    k = 1 / len(ma) + 1 / len(md)
    run_v, item_v = s2_run * k, max(0.0, dvec.var(ddof=1) - s2_e * k) / len(ids)
    v = run_v + item_v
    df = v ** 2 / (run_v ** 2 / (len(ma) + len(md) - 2) + (item_v ** 2 / (len(ids) - 1) if item_v else 0))
    res = ai.compare_arms(a, d, ["mmlu"], {"A": a, "D": d})["mmlu"]
    assert res["diff"] == pytest.approx(dvec.mean())
    assert res["se"] == pytest.approx(np.sqrt(v))
    assert res["df"] == pytest.approx(df)
    q = stats.t.ppf(0.975, df)
    assert res["ci_low"] == pytest.approx(dvec.mean() - q * np.sqrt(v))
    assert res["p"] == pytest.approx(2 * stats.t.sf(abs(dvec.mean()) / np.sqrt(v), df))


def test_single_a_run_borrows_d_variance_and_says_so():
    rng = np.random.default_rng(8)
    a, d = simulate(rng, 1, 6)
    res = ai.compare_arms(a, d, ["mmlu"], {"A": a, "D": d})["mmlu"]
    assert "D" in res["run_variance_from"] and "borrowed" in res["run_variance_from"]
    # A vs the base model: the base is one deterministic evaluation, the run variance comes from D.
    base = _run("base", None, None, {b: np.full(n, 0.5) for b, n in N_ITEMS.items()}, rng)
    rb = ai.compare_arms(a, [base], ["mmlu"], {"A": a, "D": d}, b_is_base=True)["mmlu"]
    xd = np.array([r["scores"]["mmlu"] for r in d])
    assert rb["diff"] == pytest.approx(a[0]["scores"]["mmlu"] - base["scores"]["mmlu"])
    assert rb["se"] >= np.sqrt(xd.var(ddof=1)) - 1e-12  # at least the run variance of one run


def test_no_replicates_falls_back_to_items_and_says_too_narrow():
    rng = np.random.default_rng(9)
    a, d = simulate(rng, 1, 1)
    res = ai.compare_arms(a, d, ["mmlu"], {"A": a, "D": d})["mmlu"]
    assert res["run_variance_from"] is None and "too narrow" in res["interval"]
    dvec = np.array([a[0]["items"]["mmlu"][k] - d[0]["items"]["mmlu"][k] for k in sorted(a[0]["items"]["mmlu"])])
    assert res["se"] == pytest.approx(dvec.std(ddof=1) / np.sqrt(dvec.size))


def _holm_reference(ps):
    # Holm (1979), written from the definition: sort ascending, p_(j) * (m - j + 1), running max, cap 1.
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adj, best = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order, start=1):
        best = max(best, (len(ps) - rank + 1) * ps[i])
        adj[i] = min(1.0, best)
    return adj


def test_holm_matches_definition_and_statsmodels_if_present():
    ps = [0.01, 0.04, 0.03, 0.005, 0.5, 0.2]
    got = ai.holm({f"b{i}": p for i, p in enumerate(ps)})
    assert [got[f"b{i}"] for i in range(len(ps))] == pytest.approx(_holm_reference(ps))
    assert ai.holm({"a": 0.01, "b": None}) == {"a": 0.01, "b": None}
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return
    assert [got[f"b{i}"] for i in range(len(ps))] == pytest.approx(multipletests(ps, method="holm")[1])


def test_null_units_compare_like_with_like():
    """A's mean over its training seeds is set against D means over the same training seeds, per control seed."""
    rng = np.random.default_rng(2)
    a, d = simulate(rng, 2, 5)
    tab = st.null_table(a, d, ["mmlu"])["mmlu"]
    ref = [np.mean([r["scores"]["mmlu"] for r in d if r["control_seed"] == c]) for c in range(100, 105)]
    assert sorted(tab["null"]) == pytest.approx(sorted(ref)) and tab["n"] == 5
    a_mean = np.mean([r["scores"]["mmlu"] for r in a])
    assert tab["p"] == pytest.approx((1 + sum(x >= a_mean for x in ref)) / 6)
    low = st.null_table(a, d, ["mmlu"], lower_is_better=["mmlu"])["mmlu"]
    assert low["p"] == pytest.approx((1 + sum(x <= a_mean for x in ref)) / 6)


def _fixed(arm, cs, ts, outcomes):
    items = {"mmlu": {f"mmlu/{i}": float(x) for i, x in enumerate(outcomes)}}
    return {"trial_id": f"{arm}-{cs}", "arm": arm, "control_seed": cs, "train_seed": ts,
            "scores": {"mmlu": float(np.mean(outcomes))}, "items": items}


def test_runs_that_tie_by_chance_do_not_read_as_certainty():
    """Two D runs with the same mean on 3 items (as in a small demo) still carry item noise; when nothing
    varies anywhere (identical D runs, a constant item difference) there is no interval and no p (never p = 0)."""
    a = [_fixed("A", None, 0, [1, 1, 1])]
    tied_means = [_fixed("D", 1, 0, [1, 1, 0]), _fixed("D", 2, 0, [1, 0, 1])]
    r = ai.compare_arms(a, tied_means, ["mmlu"], {"A": a, "D": tied_means})["mmlu"]
    x = np.array([[1, 1, 0], [1, 0, 1]], float)
    s2_e = ((x - x.mean(0) - x.mean(1, keepdims=True) + x.mean()) ** 2).sum() / ((2 - 1) * (3 - 1))
    assert r["se"] ** 2 >= s2_e / 3 * (1 + 1 / 2) - 1e-12 and r["ci_low"] < 0 < r["ci_high"]
    same = [_fixed("D", 1, 0, [0, 0, 0]), _fixed("D", 2, 0, [0, 0, 0])]
    r = ai.compare_arms(a, same, ["mmlu"], {"A": a, "D": same})["mmlu"]
    assert r["diff"] == pytest.approx(1.0) and r["p"] is None and r["ci_low"] is None


def test_runs_on_different_items_fall_back_to_run_means():
    """Runs scored on different items (e.g. evaluated with different seeds under a limit) cannot be paired
    by item: the difference is of run means, as Table 4 shows it."""
    a = [_fixed("A", None, 0, [1, 1, 0, 1])]
    d = [_fixed("D", c, 0, [0, 1, 0, 0]) for c in (1, 2, 3)]
    for k, r in enumerate(d):  # each D run saw other items
        r["items"]["mmlu"] = {f"other{k}/{i}": v for i, v in enumerate(r["items"]["mmlu"].values())}
    d[1]["scores"]["mmlu"] = 0.5
    r = ai.compare_arms(a, d, ["mmlu"], {"A": a, "D": d})["mmlu"]
    assert r["n_items"] == 0 and r["interval"].startswith("runs only")
    assert r["diff"] == pytest.approx(0.75 - np.mean([0.25, 0.5, 0.25]))
