"""Statistics of the ablation's results (METHOD 7, 8): arm means over seeds, arm differences, the null.

Pure functions on in-memory runs, so the report's numbers can be tested without a study on disk.
A run is a dict ``{trial_id, arm, control_seed, train_seed, scores: {bench: float},
items: {bench: {item_id: float}}}`` (``items`` may lack a benchmark whose file is missing). The
held-out loss of a fine-tune is one more metric, ``heldout_loss`` (lower is better; per-record
losses as its items when the fine-tune kept them).

What is aggregated:
- an arm that uses a random set R (its runs carry a ``control_seed``) is averaged over every
  (control seed, training seed) run: its spread mixes the choice of R and training noise;
- an arm that does not use R is averaged over training seeds (runs that share a training seed are
  first averaged: they differ only in a control seed the arm never reads).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from coloc_ray.analysis.stats import empirical_p

#: Smallest null size whose +1-corrected empirical p can fall below 0.05 (1 / (19 + 1)).
MIN_NULL_FOR_05 = 19


def uses_control_seed(runs: Sequence[dict]) -> bool:
    return any(r.get("control_seed") is not None for r in runs)


def arm_units(runs: Sequence[dict]) -> tuple[list[dict[str, float]], str]:
    """The replicate units of one arm (score dicts) and a phrase saying what they range over."""
    if uses_control_seed(runs):
        return [dict(r["scores"]) for r in runs], "control seeds x training seeds"
    by_seed: dict = defaultdict(list)
    for r in runs:
        by_seed[r.get("train_seed")].append(r["scores"])
    units = []
    for group in by_seed.values():
        benches = {b for s in group for b in s}
        units.append({b: float(np.mean([s[b] for s in group if b in s])) for b in benches})
    return units, "training seeds"


def _mean_std(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}


def summarize_units(units: Sequence[dict[str, float]], benchmarks: Sequence[str],
                    extra: Sequence[str] = ()) -> dict:
    """Per-benchmark mean/std/n over units, and the Avg column (mean over benchmarks, per unit).

    A unit enters the Avg only if it has every benchmark, so Avg compares like with like. ``extra``
    metrics (held-out loss) get a column but never enter the Avg.
    """
    scores = {b: _mean_std([u[b] for u in units if b in u]) for b in [*benchmarks, *extra]}
    complete = [float(np.mean([u[b] for b in benchmarks])) for u in units
                if benchmarks and all(b in u for b in benchmarks)]
    return {"scores": scores, "avg": _mean_std(complete)}


def _delta(row: dict, ref: dict | None, benchmarks: Sequence[str]) -> dict | None:
    if ref is None:
        return None
    out = {}
    for b in [*benchmarks, "avg"]:
        x = row["avg"] if b == "avg" else row["scores"][b]
        y = ref["avg"] if b == "avg" else ref["scores"][b]
        out[b] = None if x["mean"] is None or y["mean"] is None else x["mean"] - y["mean"]
    return out


def table4(base: dict | None, runs_by_arm: dict[str, list[dict]], benchmarks: Sequence[str],
           extra: Sequence[str] = ()) -> list[dict]:
    """Rows of the main table: the base model first (always, even if missing), then every arm.

    Each row: ``arm, aggregated_over, n_units, scores{bench|extra: {mean, std, n}}, avg{...},
    delta_vs_base{bench|extra|avg: float|None}, delta_vs_D{...}``. ``extra`` metrics (held-out
    loss) are columns outside the Avg.
    """
    rows = []
    base_units = [dict(base["scores"])] if base else []
    rows.append({"arm": "base", "aggregated_over": "single evaluation" if base else "missing",
                 "n_units": len(base_units), **summarize_units(base_units, benchmarks, extra)})
    for arm, runs in runs_by_arm.items():
        units, over = arm_units(runs)
        rows.append({"arm": arm, "aggregated_over": over, "n_units": len(units),
                     **summarize_units(units, benchmarks, extra)})
    base_row = rows[0] if base else None
    d_row = next((r for r in rows if r["arm"] == "D"), None)
    cols = [*benchmarks, *extra]
    for r in rows:
        r["delta_vs_base"] = _delta(r, base_row, cols) if r["arm"] != "base" else None
        r["delta_vs_D"] = _delta(r, d_row, cols) if r["arm"] != "D" else None
    return rows


def null_units(a_runs: Sequence[dict], d_runs: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Like-with-like units of A and of the D null: each is a mean over the same training seeds.

    A's unit is its mean over its training seeds; D's null has one unit per control seed, the mean of
    that control seed's runs over the same training seeds (control seeds missing one are left out).
    Comparing A's mean of T runs with single D runs would set a less noisy number against a noisier null.
    """
    seeds = sorted({r.get("train_seed") for r in a_runs}, key=str)
    a_unit = [_mean_scores([r for r in a_runs])] if a_runs else []
    by_ctrl: dict = defaultdict(dict)
    for r in d_runs:
        by_ctrl[r.get("control_seed")][r.get("train_seed")] = r
    d_units = [_mean_scores([runs[t] for t in seeds]) for _, runs in sorted(by_ctrl.items(), key=lambda kv: str(kv[0]))
               if all(t in runs for t in seeds)]
    return a_unit, d_units


def _mean_scores(runs: Sequence[dict]) -> dict[str, float]:
    benches = set.intersection(*(set(r["scores"]) for r in runs)) if runs else set()
    return {b: float(np.mean([r["scores"][b] for r in runs])) for b in benches}


def null_table(a_runs: Sequence[dict], d_runs: Sequence[dict], metrics: Sequence[str],
               lower_is_better: Sequence[str] = ()) -> dict:
    """Per metric: the arm-D null (one unit per control seed, see :func:`null_units`), A's mean, A's empirical p.

    p = (1 + #{D unit at least as good as A}) / (n + 1) (``>=``; ``<=`` for a metric in
    ``lower_is_better``, e.g. held-out loss); with n null units it cannot fall below 1 / (n + 1), so it
    is flagged ``meaningful`` only when n >= 19 (the smallest null that can reach p < 0.05).
    ``a_scores`` keeps A's single runs for the plot.
    """
    a_unit, d_units = null_units(a_runs, d_runs)
    out = {}
    for m in metrics:
        null = [u[m] for u in d_units if m in u]
        a_mean = a_unit[0].get(m) if a_unit else None
        alt = "less" if m in lower_is_better else "greater"
        p = empirical_p(a_mean, null, alternative=alt) if (null and a_mean is not None) else None
        out[m] = {"null": null, "a_scores": [float(r["scores"][m]) for r in a_runs if m in r["scores"]],
                  "a_mean": a_mean, "p": p, "n": len(null), "alternative": alt,
                  "null_unit": f"D mean over the same {len({r.get('train_seed') for r in a_runs})} training seed(s) "
                               "as A, one per control seed",
                  "min_p": 1.0 / (len(null) + 1), "meaningful": len(null) >= MIN_NULL_FOR_05}
    return out

