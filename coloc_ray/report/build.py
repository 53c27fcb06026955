"""The study report: ``build_report(study_dir)`` reads a finished (or partial) study and writes
``report/report.md``, ``report/results.json`` and figures.

Inputs (contract "Study" in docs/ARCHITECTURE.md): ``probes/*.json``, ``analysis/analysis.json``,
``base/`` (eval + per-item rows), ``trials/<id>/result.json`` (+ their per-item rows), ``study.json``.
Anything missing is listed under "Problems" in the report, never a crash: a partial study still
gets the tables it can support. Scores are fractions as in ``eval.json``; the markdown shows points.
The markdown opens with a headline written from the numbers (A vs D, A vs base, co-localization).
"""

from __future__ import annotations

import logging
from pathlib import Path

from coloc_ray.ablation import layout
from coloc_ray.analysis import ablation_stats as st
from coloc_ray.analysis import arm_intervals as ai
from coloc_ray.evaluation.registry import benchmark_labels
from coloc_ray.report import results as sr

log = logging.getLogger(__name__)

BENCH_LABELS = {**benchmark_labels(), "avg": "Avg", "heldout_loss": "held-out loss"}  # labels: the registry's


#: What the report reads from analysis.json; a record without them is recomputed from the probes.
_ANALYSIS_KEYS = {"spearman_r", "spearman_p", "permutation_p", "top_k", "sensitive_layers", "rope_layers",
                  "overlap", "expected_overlap", "overlap_p", "partial_r", "partial_p", "circular_shift_p"}


def _colocalization(study_dir: Path, out: Path, problems: list[str]) -> dict | None:
    """analysis.json (recomputed from the probes if absent) and the two probe figures."""
    from coloc_ray.analysis.colocalization import analyze
    from coloc_ray.analysis.plots import plot_profiles, plot_rank_scatter
    from coloc_ray.analysis.run import band, embedding_reference, rope_uncertainty, sensitivity_uncertainty
    from coloc_ray.errors import UserError

    sens = sr.read_json_checked(study_dir / layout.SENSITIVITY, problems, "sensitivity probe")
    rope = sr.read_json_checked(study_dir / layout.ROPE, problems, "RoPE-influence probe")
    path = study_dir / layout.ANALYSIS
    ana = sr.read_json_checked(path, problems, "analysis") if path.is_file() else None
    if ana is not None and not (isinstance(ana, dict) and _ANALYSIS_KEYS <= set(ana)):
        missing = sorted(_ANALYSIS_KEYS - set(ana)) if isinstance(ana, dict) else ["(not an object)"]
        problems.append(f"analysis: {path} lacks {', '.join(missing)}; "
                        + ("recomputed from the probes" if sens and rope else "no probe statistics"))
        ana = None
    try:
        interp = [i for i, f in enumerate((rope or {}).get("interpolated") or []) if f]
        if ana is None and sens and rope:
            ana = analyze(sens["scores"], rope["scores"], top_k=int(sens.get("top_k") or 10), exclude=interp)
        if ana and sens and "sensitivity_uncertainty" not in ana:
            unc = sensitivity_uncertainty(sens, int(ana["top_k"]))
            if unc is not None:
                ana["sensitivity_uncertainty"] = unc
        if ana and rope and "rope_uncertainty" not in ana:
            runc = rope_uncertainty(rope, int(ana["top_k"]))  # bootstrap over texts (None: no per_text)
            if runc is not None:
                ana["rope_uncertainty"] = runc
        if ana and sens and "embedding_reference" not in ana and embedding_reference(sens) is not None:
            ana["embedding_reference"] = embedding_reference(sens)
        if ana and sens and rope:
            plot_profiles(sens["scores"], rope["scores"], ana["sensitive_layers"], ana["rope_layers"],
                          out / "profiles.png", title=f"{sens.get('model') or ''}",
                          sens_band=band(ana.get("sensitivity_uncertainty")), rope_interpolated=interp,
                          sens_reference=(ana.get("embedding_reference") or {}).get("score"),
                          rope_band=band(ana.get("rope_uncertainty")))
            plot_rank_scatter(sens["scores"], rope["scores"], out / "rank_scatter.png",
                              spearman_r=ana["spearman_r"])
    except (UserError, KeyError, TypeError) as e:
        problems.append(f"co-localization: could not analyze the probes ({e})")
    return ana


def _cost(base, runs, rate: float) -> dict:
    """results.json ``cost``: per arm, fine-tune and evaluation apart (``coloc_ray.ablation.cost``)."""
    from coloc_ray.report.cost import cost_table

    return cost_table(base, sr.by_arm(runs), rate)


def _with_holm(table: dict, family: list[str]) -> dict:
    """Add ``p_holm``: Holm-adjusted across the benchmarks of ``family`` (one family of claims);
    a metric outside it (held-out loss) is its own single claim and keeps its p."""
    adj = ai.holm({b: table[b]["p"] for b in family if b in table})
    for m, v in table.items():
        v["p_holm"] = adj.get(m, v["p"])
    return table


# -- the report -------------------------------------------------------------------------------
def compute_results(study_dir: str | Path, out: Path | None = None) -> dict:
    """Every number of the report (the ``results.json`` record), figures into ``out`` if given."""
    study_dir = Path(study_dir)
    problems: list[str] = []
    cfg = sr.study_config(study_dir)
    base = sr.load_base(study_dir, problems)
    runs = sr.load_trials(study_dir, problems)
    sr.attach_base_heldout(base, runs)
    benches = sr.benchmarks(base, runs)
    sr.missing_grid(runs, problems)
    sr.missing_benches(base, runs, benches, problems)
    by_arm = sr.by_arm(runs)
    a_runs, d_runs = by_arm.get("A", []), by_arm.get("D", [])
    extra = [sr.HELDOUT] if sr.has_heldout(runs) else []
    pool = {"A": a_runs, "D": d_runs}  # arms whose run-to-run spread gives the run variance
    res = {"study": cfg, "benchmarks": benches, "extra_metrics": extra, "lower_is_better": [sr.HELDOUT],
           "score_unit": "fraction (report.md shows points = x100); heldout_loss in nats per token",
           "table4": st.table4(base, by_arm, benches, extra),
           "table5_a_minus_d": _with_holm(ai.compare_arms(a_runs, d_runs, [*benches, *extra], pool), benches),
           "a_minus_d_avg": ai.compare_average(a_runs, d_runs, benches, pool),
           "a_minus_base": (_with_holm(ai.compare_arms(a_runs, [base], [*benches, *extra], pool, b_is_base=True),
                                       benches) if base else None),
           "a_minus_base_avg": ai.compare_average(a_runs, [base], benches, pool, b_is_base=True) if base else None,
           "null": _with_holm(st.null_table(a_runs, d_runs, [*benches, *extra], lower_is_better=[sr.HELDOUT]),
                              benches),
           "cost": _cost(base, runs, cfg["cost_per_gpu_hour"]),
           "base_heldout_from": (base or {}).get("heldout_from"),
           "trials": [{k: r[k] for k in ("trial_id", "arm", "control_seed", "train_seed", "scores")} for r in runs]}
    if not a_runs or not d_runs:
        problems.append(f"arm {'A' if not a_runs else 'D'} has no finished trial: no A - D comparison")
    res["incomplete"] = _unfinished(study_dir, base, runs)
    if res["incomplete"]:
        problems.insert(0, f"INCOMPLETE: {len(res['incomplete'])} planned trial(s) have no readable result: "
                           f"{', '.join(res['incomplete'])}")
    res["colocalization"] = _colocalization(study_dir, out, problems) if out else None
    res["problems"] = problems
    return res


def _unfinished(study_dir: Path, base, runs: list[dict]) -> list[str]:
    """Trials the study planned (``plan.json``) that have no readable result: a report without them is not the
    study's report, and says so at its top."""
    from coloc_ray.io import read_json

    plan = study_dir / layout.PLAN
    try:
        planned = [t["trial_id"] for t in read_json(plan)["trials"]] if plan.is_file() else []
    except (ValueError, KeyError, TypeError):
        return ["plan.json unreadable"]
    have = {r["trial_id"] for r in runs} | ({"base"} if base else set())
    return [t for t in planned if t not in have]


def build_report(study_dir: str | Path) -> dict:
    """Write ``report/report.md``, ``report/results.json`` and PNGs for a study; return the results.

    Args:
        study_dir: the study folder (see module docstring for what it may contain).

    Returns:
        The ``results.json`` record (tables, CIs, null p-values, cost, problems, headline).
    """
    from coloc_ray.io import staged_output, write_json
    from coloc_ray.report.plots import plot_arms, plot_null

    study_dir = Path(study_dir)
    with staged_output(study_dir / layout.REPORT) as out:
        res = compute_results(study_dir, out)
        labels = {b: BENCH_LABELS.get(b, b) for b in [*res["benchmarks"], *res["extra_metrics"]]}
        if res["benchmarks"]:
            base_scores = {b: c["mean"] for b, c in res["table4"][0]["scores"].items() if c["mean"] is not None}
            plot_null(res["null"], labels, out / "null.png", base=base_scores, unscaled=res["extra_metrics"])
            plot_arms(res["table4"], res["benchmarks"], labels, out / "arms.png")
        res["figures"] = sorted(p.name for p in out.glob("*.png"))
        md, res["headline"] = render_markdown(res, labels)
        (out / Path(layout.REPORT_MD).name).write_text(md)
        write_json(out / Path(layout.RESULTS).name, res)
    log.info("report: %s", res["headline"])
    return res


# -- markdown ---------------------------------------------------------------------------------
def _pts(x, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _val(x, metric: str, signed: bool = False) -> str:
    """Points for a benchmark score (fraction x 100), the raw value (3 decimals) for held-out loss."""
    if metric != sr.HELDOUT:
        return _pts(x, signed)
    if x is None:
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _cell(c: dict, metric: str = "") -> str:
    if c["mean"] is None:
        return "n/a" if metric == sr.HELDOUT else "—"
    scale = 1.0 if metric == sr.HELDOUT else 100.0
    spread = f" ± {scale * c['std']:.{3 if metric == sr.HELDOUT else 2}f}" if c["std"] is not None else ""
    return f"{_val(c['mean'], metric)}{spread} (n={c['n']})"


def _p(p) -> str:
    return "—" if p is None else f"{p:.3g}"


def _ci(v: dict, metric: str = "") -> str:
    if v.get("ci_low") is None:
        return "—"
    return f"[{_val(v['ci_low'], metric, True)}, {_val(v['ci_high'], metric, True)}]"


def _arm_label(arm: str) -> str:
    try:
        from coloc_ray.ablation.arms import ARMS

        return f"{arm}: {ARMS[arm].description}" if arm in ARMS else arm
    except ImportError:  # the arm registry is optional for reading a report
        return arm


def _row_of(res: dict, arm: str) -> dict | None:
    return next((r for r in res["table4"] if r["arm"] == arm and r["n_units"]), None)


def _verdict(v: dict | None, better: str, worse: str, level: str) -> str:
    """A word for a difference from its interval: only an interval that excludes 0 earns a direction."""
    if not v or v.get("diff") is None:
        return level
    if v["ci_low"] is not None and v["ci_low"] > 0:
        return better
    if v["ci_high"] is not None and v["ci_high"] < 0:
        return worse
    return level


def headline(res: dict, labels: dict[str, str]) -> str:
    """The opening paragraph, written from the numbers: A vs D, A vs base, held-out loss, co-localization.

    One claim per family: the six-benchmark average carries its own interval, and per-benchmark
    statements use Holm-adjusted p-values only.
    """
    a, d, base = _row_of(res, "A"), _row_of(res, "D"), _row_of(res, "base")
    parts = []
    if a and d:
        avg = res.get("a_minus_d_avg") or {}
        t5 = {b: v for b, v in res["table5_a_minus_d"].items() if v["diff"] is not None and b in res["benchmarks"]}
        verdict = _verdict(avg, "beats", "scores below", "is not distinguishable from")
        ci = f", 95 % CI {_ci(avg)}, p = {_p(avg.get('p'))}" if avg.get("ci_low") is not None else ""
        parts.append(f"Arm A (co-localized) {verdict} the random control D on average: "
                     f"{_pts(a['avg']['mean'])} vs {_pts(d['avg']['mean'])} points "
                     f"(A − D = {_pts(_sub(a['avg']['mean'], d['avg']['mean']), True)}{ci}).")
        if t5:
            lo, hi = min(t5, key=lambda b: t5[b]["diff"]), max(t5, key=lambda b: t5[b]["diff"])
            spread = (f"A − D is {_pts(t5[lo]['diff'], True)} on every benchmark" if t5[lo]["diff"] == t5[hi]["diff"]
                      else f"Per benchmark A − D ranges from {_pts(t5[lo]['diff'], True)} ({labels[lo]}) to "
                      f"{_pts(t5[hi]['diff'], True)} ({labels[hi]})")
            up = [b for b, v in t5.items() if v["p_holm"] is not None and v["p_holm"] < 0.05 and v["diff"] > 0]
            down = [b for b, v in t5.items() if v["p_holm"] is not None and v["p_holm"] < 0.05 and v["diff"] < 0]
            parts.append(f"{spread}; Holm-adjusted p < 0.05 in A's favour on {len(up)} of {len(t5)} benchmarks"
                         + (f" ({', '.join(labels[b] for b in up)})" if up else "")
                         + (f" and against A on {len(down)} ({', '.join(labels[b] for b in down)})" if down else "")
                         + ".")
        parts.append(_interval_note(res["table5_a_minus_d"]))
    else:
        parts.append("No A − D comparison: arm " + ("A" if not a else "D") + " has no finished trial.")
    ranked = sorted((r for r in res["table4"] if r["avg"]["mean"] is not None), key=lambda r: -r["avg"]["mean"])
    if len(ranked) > 1:
        parts.append("Ordering by Avg (point means): " + _ordering(ranked)
                     + " (the paper's prediction for co-localization: A > B, C > D).")
    if a and base:
        da = _sub(a["avg"]["mean"], base["avg"]["mean"])
        ab = res.get("a_minus_base_avg") or {}
        word = {1: "above", -1: "below", 0: "level with"}[_sign(da)]
        if ab.get("ci_low") is not None and _sign(da) != 0 and ab["ci_low"] <= 0 <= ab["ci_high"]:
            word += " (not resolved by its interval)"
        elif ab and ab.get("ci_low") is None and _sign(da) != 0:
            word += " (no interval: nothing to estimate run-to-run variance from)"
        above = [b for b in res["benchmarks"] if (a["delta_vs_base"] or {}).get(b) is not None
                 and a["delta_vs_base"][b] > 0]
        n = sum(1 for b in res["benchmarks"] if (a["delta_vs_base"] or {}).get(b) is not None)
        ci = f", 95 % CI {_ci(ab)}" if ab.get("ci_low") is not None else ""
        parts.append(f"Against the base model (no fine-tuning) A is {word} it on average "
                     f"({_pts(da, True)} points{ci}; above base on {len(above)} of {n} benchmarks).")
    elif not base:
        parts.append("The base model's evaluation is missing, so no comparison with it.")
    parts.append(_heldout_sentence(res))
    parts.append(_null_sentence(res))
    ana = res.get("colocalization")
    if ana:
        parts.append(f"Probes: Spearman r(S, I) = {ana['spearman_r']:+.3f} (p = {ana['spearman_p']:.2g}), "
                     f"top-{ana['top_k']} overlap {ana['overlap']} vs {ana['expected_overlap']:.3g} expected; "
                     f"given depth, partial r = {ana['partial_r']:+.3f} (p = {ana['partial_p']:.2g}"
                     + (f", depth-surrogate p = {ana['depth_surrogate_p']:.2g}" if "depth_surrogate_p" in ana else "")
                     + ")."
                     + (f" Warning: the sensitive set S is unstable under a bootstrap over pairs (mean Jaccard "
                        f"{ana['sensitivity_uncertainty']['stability_jaccard']:.2f})."
                        if (ana.get("sensitivity_uncertainty") or {}).get("unstable") else ""))
    return " ".join(p for p in parts if p)


def _interval_note(table: dict) -> str:
    """Say once what the intervals rest on (borrowed run variance, or none at all)."""
    kinds = sorted({(v.get("interval"), v.get("run_variance_from")) for v in table.values() if v.get("interval")},
                   key=str)
    return " ".join(f"Intervals: {interval}." if src is None else
                    f"Intervals: {interval}; run-to-run variance from {src}." for interval, src in kinds)


def _heldout_sentence(res: dict) -> str:
    v = res["table5_a_minus_d"].get(sr.HELDOUT)
    if not v or v["diff"] is None:
        return ""
    word = _verdict(v, "higher (worse) than", "lower (better) than", "not distinguishable from")
    vb = (res.get("a_minus_base") or {}).get(sr.HELDOUT) or {}
    base = (f" Against the base model (the step-0 loss): A − base = {_val(vb['diff'], sr.HELDOUT, True)} "
            f"(95 % CI {_ci(vb, sr.HELDOUT)})." if vb.get("diff") is not None
            else " No trial recorded its step-0 loss, so the base model's held-out loss is n/a.")
    return (f"Held-out loss (lower is better): A's is {word} D's, A − D = {_val(v['diff'], sr.HELDOUT, True)} "
            f"(95 % CI {_ci(v, sr.HELDOUT)}, p = {_p(v['p'])}).{base}")


def _sub(x, y):
    return None if x is None or y is None else x - y


def _sign(x) -> int:
    """Sign at the report's printed precision (0.01 points): a printed tie is never called above or below."""
    if x is None or abs(x * 100) < 0.005:
        return 0
    return 1 if x > 0 else -1


def _ordering(ranked: list[dict]) -> str:
    """'A 50.00 > B 48.00 = C 48.00': '=' where the printed averages tie, so ties are not read as an ordering."""
    out = f"{ranked[0]['arm']} {_pts(ranked[0]['avg']['mean'])}"
    for prev, r in zip(ranked, ranked[1:]):
        op = " = " if _sign(prev["avg"]["mean"] - r["avg"]["mean"]) == 0 else " > "
        out += f"{op}{r['arm']} {_pts(r['avg']['mean'])}"
    return out


def _null_sentence(res: dict) -> str:
    nulls = [v for b, v in res["null"].items() if v["p"] is not None and b in res["benchmarks"]]
    if not nulls:
        return ""
    n = min(v["n"] for v in nulls)
    ps = [v.get("p_holm", v["p"]) for v in nulls]
    span = f"{min(ps):.3g}" if min(ps) == max(ps) else f"{min(ps):.3g}–{max(ps):.3g} across benchmarks"
    s = f"Against the arm-D null A's empirical p (Holm-adjusted) is {span}"
    if n < st.MIN_NULL_FOR_05:
        return s + (f", but with only {n} D control seed(s) the smallest attainable p is {1 / (n + 1):.3g}: "
                    "too few control seeds for a meaningful p.")
    return s + f" over {n} D control seeds."


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def _md_table4(res: dict, labels: dict[str, str]) -> list[str]:
    benches, extra = res["benchmarks"], res["extra_metrics"]
    rows = [[_arm_label(r["arm"]) if r["arm"] != "base" else "base model (no fine-tuning)",
             *[_cell(r["scores"][b]) for b in benches], _cell(r["avg"]),
             *[_cell(r["scores"][m], m) for m in extra]] for r in res["table4"]]
    over = "; ".join(f"{r['arm']}: {r['aggregated_over']}" for r in res["table4"])
    out = ["## Table 4: score per arm (points, mean ± std over replicate runs, n runs)", "",
           *_table(["Model", *[labels[b] for b in benches], "Avg", *[labels[m] for m in extra]], rows), "",
           f"Aggregated over: {over}. Avg = mean over benchmarks of each run that has all of them."
           + (" Held-out loss: mean over the fine-tune's held-out records of each record's loss (nats/token), "
              "the same records for every arm; lower is better; not in the Avg. The base model's is the same "
              "records' loss at step 0 of a fine-tune (LoRA B = 0, GARFA alpha = 1: the base model)"
              + (f", {res['base_heldout_from']}" if res.get("base_heldout_from") else "; n/a: no trial recorded it")
              + "." if extra else ""),
           "", "### Deltas (points): vs base / vs D", ""]
    drows = []
    for r in res["table4"]:
        if r["arm"] == "base":
            continue
        vb, vd = r["delta_vs_base"] or {}, r["delta_vs_D"] or {}
        drows.append([r["arm"], *[f"{_val(vb.get(b), b, True)} / {_val(vd.get(b), b, True)}"
                                  for b in [*benches, "avg", *extra]]])
    return out + _table(["Arm", *[labels[b] for b in benches], "Avg", *[labels[m] for m in extra]], drows) + [""]


def _diff_rows(table: dict, avg: dict | None, labels: dict[str, str], benches: list[str]) -> list[list[str]]:
    rows = [[labels[m], _val(v["diff"], m, True), _ci(v, m), _p(v.get("p")),
             _p(v.get("p_holm")) if m in benches else "(own claim)", f"{v['n_a']} / {v['n_b']}",
             str(v["n_items"])] for m, v in table.items()]
    if avg:
        rows.append([f"**Avg of {len(benches)}**", _pts(avg["diff"], True), _ci(avg), _p(avg.get("p")),
                     "(own claim)", f"{avg['n_a']} / {avg['n_b']}", "—"])
    return rows


def _md_table5(res: dict, labels: dict[str, str]) -> list[str]:
    benches = res["benchmarks"]
    header = ["Metric", "A − D", "95 % CI", "p", "Holm p", "runs A / D", "items"]
    src = _interval_note(res["table5_a_minus_d"])
    out = ["## Table 5: A − D (points; held-out loss in nats, lower is better)", "",
           "Runs are the unit of replication: each interval comes from a crossed runs x items random-effects "
           "model (run variance pooled over A's and D's runs, arm-by-item variance from the items; t quantile "
           "on Satterthwaite degrees of freedom; calibrated by simulation). Per-benchmark p-values are "
           "Holm-adjusted across the benchmarks (one family); the average over benchmarks is one claim with "
           "its own interval. MGSM's items are pooled over languages here. " + src, "",
           *_table(header, _diff_rows(res["table5_a_minus_d"], res.get("a_minus_d_avg"), labels, benches)), ""]
    if res.get("a_minus_base"):
        out += ["A − base model (the base is one deterministic evaluation; run variance from A's and D's runs):", "",
                *_table(["Metric", "A − base", "95 % CI", "p", "Holm p", "runs A / base", "items"],
                        _diff_rows(res["a_minus_base"], res.get("a_minus_base_avg"), labels, benches)), ""]
    return out


def _md_null(res: dict, labels: dict[str, str]) -> list[str]:
    rows = []
    for b, v in res["null"].items():
        rng = f"{_val(min(v['null']), b)}–{_val(max(v['null']), b)}" if v["null"] else "—"
        note = "" if v["meaningful"] else f"too few control seeds (min p {v['min_p']:.3g})"
        rows.append([labels[b], str(v["n"]), rng, _val(v["a_mean"], b), _p(v["p"]),
                     _p(v.get("p_holm")) if b in res["benchmarks"] else "(own claim)", note])
    unit = next((v["null_unit"] for v in res["null"].values()), "")
    out = ["## Random-control null (arm D)", "",
           f"One null value per control seed ({unit}). Empirical p = (1 + #{{D ≥ A's mean}}) / (n + 1), "
           "one-sided; for held-out loss #{D ≤ A} (lower is better).", "",
           *_table(["Metric", "D units", "D range", "A mean", "empirical p", "Holm p", "note"], rows), ""]
    return out + (["![null distribution](null.png)", ""] if "null.png" in res.get("figures", []) else [])


def _md_coloc(res: dict) -> list[str]:
    a = res.get("colocalization")
    if not a:
        return ["## Co-localization (probes)", "", "No probe analysis available.", ""]
    out = ["## Co-localization (probes)", "",
           *_table(["statistic", "value"], [
               ["Spearman r (p; permutation p)", f"{a['spearman_r']:+.3f} ({a['spearman_p']:.3g}; {a['permutation_p']:.3g})"],
               [f"top-{a['top_k']} sensitive layers S", str(a["sensitive_layers"])],
               [f"top-{a['top_k']} RoPE layers", str(a["rope_layers"])],
               ["overlap (expected; P(X ≤ o))", f"{a['overlap']} ({a['expected_overlap']:.3g}; {a['overlap_p']:.3g})"],
               ["partial r given depth (t p)", f"{a['partial_r']:+.3f} ({a['partial_p']:.3g})"],
               ["depth-surrogate p (phase-randomized, keeps autocorrelation; the depth control)",
                _p(a.get("depth_surrogate_p"))],
               ["circular-shift p (not a depth control: floor 1/L for trending profiles)",
                f"{a['circular_shift_p']:.3g}"],
               *([["embedding-output distance S_emb (reference: token identity alone; layers with S ≤ S_emb)",
                   f"{a['embedding_reference']['score']:.4g} ({a['embedding_reference']['layers_at_or_below']})"]]
                 if a.get("embedding_reference") else [])]), ""]
    u = a.get("sensitivity_uncertainty")
    if u:
        from coloc_ray.analysis.probe_uncertainty import describe

        flag = "**Warning: unstable S.** " if u["unstable"] else ""
        p_in = ", ".join(f"{i}: {u['p_in_top_k'][i]:.2f}" for i in u["chosen"])
        out += [f"{flag}{describe(u)} P(layer in top-{a['top_k']}) for the chosen layers: {p_in}.", ""]
    ru = a.get("rope_uncertainty")
    if ru:
        from coloc_ray.analysis.probe_uncertainty import describe_rope

        p_in = ", ".join(f"{i}: {ru['p_in_top_k'][i]:.2f}" for i in ru["chosen"])
        out += [f"{describe_rope(ru)} P(layer in the RoPE top-{len(ru['chosen'])}) for the chosen layers: {p_in}.",
                ""]
    if a.get("excluded_layers"):
        out += [f"Interpolated RoPE layers {a['excluded_layers']} are left out of every statistic.", ""]
    if a.get("interpretation"):
        out += [a["interpretation"], ""]
    return out + [f"![{f}]({f})" for f in ("profiles.png", "rank_scatter.png") if f in res.get("figures", [])] + [""]


def _md_cost(res: dict) -> list[str]:
    from coloc_ray.report.cost import md_cost

    return md_cost(res["cost"])


def render_markdown(res: dict, labels: dict[str, str]) -> tuple[str, str]:
    """``report.md`` text and its headline paragraph."""
    cfg = res["study"]
    head = headline(res, labels)
    if res.get("incomplete"):
        head = (f"INCOMPLETE: {len(res['incomplete'])} planned trial(s) have no result "
                f"({', '.join(res['incomplete'])}); the numbers below leave them out. " + head)
    lines = [f"# Study report: {cfg['name']}", "",
             f"Model: {cfg.get('model') or 'unknown'}; top-k: {cfg.get('top_k') or 'n/a'}; "
             f"benchmarks: {', '.join(labels[b] for b in res['benchmarks']) or 'none'}.", "",
             f"**Headline.** {head}", "",
             *_md_table4(res, labels), *_md_table5(res, labels), *_md_null(res, labels), *_md_coloc(res),
             *(["![scores per arm](arms.png)", ""] if "arms.png" in res.get("figures", []) else []),
             *_md_cost(res), "## Problems", ""]
    lines += [f"- {p}" for p in res["problems"]] or ["None: every expected file was found."]
    return "\n".join(lines) + "\n", head
