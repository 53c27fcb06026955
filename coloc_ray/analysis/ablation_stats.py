"""Statistics of the ablation's results (METHOD 7, 8): arm means over seeds, paired deltas, the null.

Pure functions on in-memory runs, so the report's numbers can be tested without a study on disk.
A run is a dict ``{trial_id, arm, control_seed, train_seed, scores: {bench: float},
items: {bench: {item_id: float}}}`` (``items`` may lack a benchmark whose file is missing).

What is aggregated:
- an arm that uses a random set R (its runs carry a ``control_seed``) is averaged over every
  (control seed, training seed) run: its spread mixes the choice of R and training noise;
- an arm that does not use R is averaged over training seeds (runs that share a training seed are
  first averaged: they differ only in a control seed the arm never reads).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from coloc_ray.analysis.stats import empirical_p, paired_bootstrap_ci

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


def summarize_units(units: Sequence[dict[str, float]], benchmarks: Sequence[str]) -> dict:
    """Per-benchmark mean/std/n over units, and the Avg column (mean over benchmarks, per unit).

    A unit enters the Avg only if it has every benchmark, so Avg compares like with like.
    """
    scores = {b: _mean_std([u[b] for u in units if b in u]) for b in benchmarks}
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


def table4(base: dict | None, runs_by_arm: dict[str, list[dict]], benchmarks: Sequence[str]) -> list[dict]:
    """Rows of the main table: the base model first (always, even if missing), then every arm.

    Each row: ``arm, aggregated_over, n_units, scores{bench: {mean, std, n}}, avg{...},
    delta_vs_base{bench|avg: float|None}, delta_vs_D{...}``.
    """
    rows = []
    base_units = [dict(base["scores"])] if base else []
    rows.append({"arm": "base", "aggregated_over": "single evaluation" if base else "missing",
                 "n_units": len(base_units), **summarize_units(base_units, benchmarks)})
    for arm, runs in runs_by_arm.items():
        units, over = arm_units(runs)
        rows.append({"arm": arm, "aggregated_over": over, "n_units": len(units),
                     **summarize_units(units, benchmarks)})
    base_row = rows[0] if base else None
    d_row = next((r for r in rows if r["arm"] == "D"), None)
    for r in rows:
        r["delta_vs_base"] = _delta(r, base_row, benchmarks) if r["arm"] != "base" else None
        r["delta_vs_D"] = _delta(r, d_row, benchmarks) if r["arm"] != "D" else None
    return rows


def pair_runs(a_runs: Iterable[dict], b_runs: Iterable[dict], by_seed: bool = True) -> list[tuple]:
    """(a, b) run pairs: the same training seed and, where both have one, the same control seed.

    ``by_seed=False`` pairs every a with every b (e.g. with the single base-model evaluation).
    """
    pairs = []
    for a in a_runs:
        for b in b_runs:
            if by_seed:
                if a.get("train_seed") != b.get("train_seed"):
                    continue
                ca, cb = a.get("control_seed"), b.get("control_seed")
                if ca is not None and cb is not None and ca != cb:
                    continue
            pairs.append((a, b))
    return pairs


def pooled_items(pairs: Sequence[tuple], bench: str) -> tuple[list[float], list[float], int]:
    """Per-item scores of both sides, joined on item id within each pair and pooled over pairs."""
    a_all, b_all, used = [], [], 0
    for a, b in pairs:
        ia, ib = a.get("items", {}).get(bench), b.get("items", {}).get(bench)
        if not ia or not ib:
            continue
        common = sorted(set(ia) & set(ib))
        if not common:
            continue
        a_all += [ia[k] for k in common]
        b_all += [ib[k] for k in common]
        used += 1
    return a_all, b_all, used


def paired_deltas(pairs: Sequence[tuple], benchmarks: Sequence[str], n: int = 10000, seed: int = 0) -> dict:
    """Per benchmark: mean item difference a - b with a paired-bootstrap 95 % CI, pooled over pairs."""
    out = {}
    for bench in benchmarks:
        a, b, used = pooled_items(pairs, bench)
        if not a:
            out[bench] = {"diff": None, "ci_low": None, "ci_high": None, "n_pairs": 0, "n_items": 0}
            continue
        est, lo, hi = paired_bootstrap_ci(a, b, n=n, seed=seed)
        out[bench] = {"diff": est, "ci_low": lo, "ci_high": hi, "n_pairs": used, "n_items": len(a)}
    return out


def null_table(a_runs: Sequence[dict], d_runs: Sequence[dict], benchmarks: Sequence[str]) -> dict:
    """Per benchmark: the arm-D scores (the random-control null), A's mean, and A's empirical p.

    p = (1 + #{D >= A}) / (n + 1); with n null runs it cannot fall below 1 / (n + 1), so it is
    flagged ``meaningful`` only when n >= 19 (the smallest null that can reach p < 0.05).
    """
    a_units, _ = arm_units(a_runs) if a_runs else ([], "")
    out = {}
    for bench in benchmarks:
        null = [float(r["scores"][bench]) for r in d_runs if bench in r["scores"]]
        a_vals = [u[bench] for u in a_units if bench in u]
        a_mean = float(np.mean(a_vals)) if a_vals else None
        p = empirical_p(a_mean, null) if (null and a_mean is not None) else None
        out[bench] = {"null": null, "a_scores": a_vals, "a_mean": a_mean, "p": p, "n": len(null),
                      "min_p": 1.0 / (len(null) + 1), "meaningful": len(null) >= MIN_NULL_FOR_05}
    return out
