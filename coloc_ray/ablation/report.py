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

from coloc_ray.analysis import ablation_stats as st
from coloc_ray.analysis import study_results as sr

log = logging.getLogger(__name__)

BENCH_LABELS = {"mmlu": "MMLU", "gpqa": "GPQA", "humanevalplus": "HumanEval+", "math": "MATH",
                "mgsm": "MGSM", "arc_challenge": "ARC", "avg": "Avg"}
N_BOOT = 10000


def _colocalization(study_dir: Path, out: Path, problems: list[str]) -> dict | None:
    """analysis.json (recomputed from the probes if absent) and the two probe figures."""
    from coloc_ray.analysis.colocalization import analyze
    from coloc_ray.analysis.plots import plot_profiles, plot_rank_scatter
    from coloc_ray.errors import UserError

    sens = sr.read_json_checked(study_dir / "probes" / "sensitivity.json", problems, "sensitivity probe")
    rope = sr.read_json_checked(study_dir / "probes" / "rope_influence.json", problems, "RoPE-influence probe")
    path = study_dir / "analysis" / "analysis.json"
    ana = sr.read_json_checked(path, problems, "analysis") if path.is_file() else None
    try:
        if ana is None and sens and rope:
            ana = analyze(sens["scores"], rope["scores"], top_k=int(sens.get("top_k") or 10))
        if ana and sens and rope:
            plot_profiles(sens["scores"], rope["scores"], ana["sensitive_layers"], ana["rope_layers"],
                          out / "profiles.png", title=f"{sens.get('model') or ''}")
            plot_rank_scatter(sens["scores"], rope["scores"], out / "rank_scatter.png",
                              spearman_r=ana["spearman_r"])
    except (UserError, KeyError, TypeError) as e:
        problems.append(f"co-localization: could not analyze the probes ({e})")
    return ana


def _cost(base, runs, rate: float) -> dict:
    per = {}
    groups = {**({"base": [base]} if base else {}), **sr.by_arm(runs)}  # base first, as in Table 4
    for arm, rs in groups.items():
        gh = sum(r["gpu_hours"] for r in rs)
        per[arm] = {"runs": len(rs), "gpu_hours": gh, "cost": gh * rate, "wall_s": sum(r["wall_s"] for r in rs)}
    total = {k: sum(v[k] for v in per.values()) for k in ("runs", "gpu_hours", "cost", "wall_s")}
    return {"cost_per_gpu_hour": rate, "per_arm": per, "total": total}


# -- the report -------------------------------------------------------------------------------
def compute_results(study_dir: str | Path, out: Path | None = None, n_boot: int = N_BOOT) -> dict:
    """Every number of the report (the ``results.json`` record), figures into ``out`` if given."""
    study_dir = Path(study_dir)
    problems: list[str] = []
    cfg = sr.study_config(study_dir)
    base = sr.load_base(study_dir, problems)
    runs = sr.load_trials(study_dir, problems)
    benches = sr.benchmarks(base, runs)
    sr.missing_grid(runs, problems)
    sr.missing_benches(base, runs, benches, problems)
    by_arm = sr.by_arm(runs)
    a_runs, d_runs = by_arm.get("A", []), by_arm.get("D", [])
    res = {"study": cfg, "benchmarks": benches, "score_unit": "fraction (report.md shows points = x100)",
           "table4": st.table4(base, by_arm, benches),
           "table5_a_minus_d": st.paired_deltas(st.pair_runs(a_runs, d_runs), benches, n=n_boot),
           "a_minus_base": (st.paired_deltas(st.pair_runs(a_runs, [base], by_seed=False), benches, n=n_boot)
                            if base else None),
           "null": st.null_table(a_runs, d_runs, benches),
           "cost": _cost(base, runs, cfg["cost_per_gpu_hour"]),
           "trials": [{k: r[k] for k in ("trial_id", "arm", "control_seed", "train_seed", "scores")} for r in runs]}
    if not a_runs or not d_runs:
        problems.append(f"arm {'A' if not a_runs else 'D'} has no finished trial: no A - D comparison")
    res["colocalization"] = _colocalization(study_dir, out, problems) if out else None
    res["problems"] = problems
    return res


def build_report(study_dir: str | Path) -> dict:
    """Write ``report/report.md``, ``report/results.json`` and PNGs for a study; return the results.

    Args:
        study_dir: the study folder (see module docstring for what it may contain).

    Returns:
        The ``results.json`` record (tables, CIs, null p-values, cost, problems, headline).
    """
    from coloc_ray.ablation.report_plots import plot_arms, plot_null
    from coloc_ray.io import staged_output, write_json

    study_dir = Path(study_dir)
    with staged_output(study_dir / "report") as out:
        res = compute_results(study_dir, out)
        labels = {b: BENCH_LABELS.get(b, b) for b in res["benchmarks"]}
        if res["benchmarks"]:
            base_scores = {b: c["mean"] for b, c in res["table4"][0]["scores"].items() if c["mean"] is not None}
            plot_null(res["null"], labels, out / "null.png", base=base_scores)
            plot_arms(res["table4"], res["benchmarks"], labels, out / "arms.png")
        res["figures"] = sorted(p.name for p in out.glob("*.png"))
        md, res["headline"] = render_markdown(res, labels)
        (out / "report.md").write_text(md)
        write_json(out / "results.json", res)
    log.info("report: %s", res["headline"])
    return res


# -- markdown ---------------------------------------------------------------------------------
def _pts(x, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _cell(c: dict) -> str:
    if c["mean"] is None:
        return "—"
    spread = f" ± {100 * c['std']:.2f}" if c["std"] is not None else ""
    return f"{_pts(c['mean'])}{spread} (n={c['n']})"


def _arm_label(arm: str) -> str:
    try:
        from coloc_ray.ablation.arms import ARMS

        return f"{arm}: {ARMS[arm].description}" if arm in ARMS else arm
    except ImportError:  # the arm registry is optional for reading a report
        return arm


def _row_of(res: dict, arm: str) -> dict | None:
    return next((r for r in res["table4"] if r["arm"] == arm and r["n_units"]), None)


def headline(res: dict, labels: dict[str, str]) -> str:
    """The opening paragraph, written from the numbers: A vs D, A vs base, co-localization."""
    a, d, base = _row_of(res, "A"), _row_of(res, "D"), _row_of(res, "base")
    parts = []
    if a and d:
        t5 = {b: v for b, v in res["table5_a_minus_d"].items() if v["diff"] is not None}
        up = [b for b, v in t5.items() if v["ci_low"] > 0]
        down = [b for b, v in t5.items() if v["ci_high"] < 0]
        verdict = "beats" if (a["avg"]["mean"] or 0) > (d["avg"]["mean"] or 0) else "does not beat"
        parts.append(f"Arm A (co-localized) {verdict} the random control D on average: "
                     f"{_pts(a['avg']['mean'])} vs {_pts(d['avg']['mean'])} points "
                     f"(A − D = {_pts(_sub(a['avg']['mean'], d['avg']['mean']), True)}).")
        if t5:
            lo, hi = min(t5, key=lambda b: t5[b]["diff"]), max(t5, key=lambda b: t5[b]["diff"])
            spread = (f"A − D is {_pts(t5[lo]['diff'], True)} on every benchmark" if t5[lo]["diff"] == t5[hi]["diff"]
                      else f"Per benchmark A − D ranges from {_pts(t5[lo]['diff'], True)} ({labels[lo]}) to "
                      f"{_pts(t5[hi]['diff'], True)} ({labels[hi]})")
            parts.append(f"{spread}; the paired-bootstrap 95 % CI excludes 0 "
                         f"in A's favour on {len(up)} of {len(t5)} benchmarks"
                         + (f" and against A on {len(down)}" if down else "") + ".")
    else:
        parts.append("No A − D comparison: arm " + ("A" if not a else "D") + " has no finished trial.")
    ranked = sorted((r for r in res["table4"] if r["avg"]["mean"] is not None), key=lambda r: -r["avg"]["mean"])
    if len(ranked) > 1:
        parts.append("Ordering by Avg: " + _ordering(ranked)
                     + " (the paper's prediction for co-localization: A > B, C > D).")
    if a and base:
        da = _sub(a["avg"]["mean"], base["avg"]["mean"])
        above = [b for b in res["benchmarks"] if (a["delta_vs_base"] or {}).get(b) is not None
                 and a["delta_vs_base"][b] > 0]
        n = sum(1 for b in res["benchmarks"] if (a["delta_vs_base"] or {}).get(b) is not None)
        word = {1: "above", -1: "below", 0: "level with"}[_sign(da)]
        parts.append(f"Against the base model (no fine-tuning) A is {word} it on average "
                     f"({_pts(da, True)} points; above base on {len(above)} of {n} benchmarks).")
    elif not base:
        parts.append("The base model's evaluation is missing, so no comparison with it.")
    parts.append(_null_sentence(res))
    ana = res.get("colocalization")
    if ana:
        parts.append(f"Probes: Spearman r(S, I) = {ana['spearman_r']:+.3f} (p = {ana['spearman_p']:.2g}), "
                     f"top-{ana['top_k']} overlap {ana['overlap']} vs {ana['expected_overlap']:.3g} expected; "
                     f"given depth, partial r = {ana['partial_r']:+.3f} (p = {ana['partial_p']:.2g}).")
    return " ".join(p for p in parts if p)


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
    nulls = [v for v in res["null"].values() if v["p"] is not None]
    if not nulls:
        return ""
    n = min(v["n"] for v in nulls)
    ps = [v["p"] for v in nulls]
    span = f"{min(ps):.3g}" if min(ps) == max(ps) else f"{min(ps):.3g}–{max(ps):.3g} across benchmarks"
    s = f"Against the arm-D null A's empirical p is {span}"
    if n < st.MIN_NULL_FOR_05:
        return s + (f", but with only {n} D run(s) the smallest attainable p is {1 / (n + 1):.3g}: "
                    "too few control seeds for a meaningful p.")
    return s + f" over {n} D runs."


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def _md_table4(res: dict, labels: dict[str, str]) -> list[str]:
    benches = res["benchmarks"]
    rows = [[_arm_label(r["arm"]) if r["arm"] != "base" else "base model (no fine-tuning)",
             *[_cell(r["scores"][b]) for b in benches], _cell(r["avg"])] for r in res["table4"]]
    over = "; ".join(f"{r['arm']}: {r['aggregated_over']}" for r in res["table4"])
    out = ["## Table 4: score per arm (points, mean ± std over replicate runs, n runs)", "",
           *_table(["Model", *[labels[b] for b in benches], "Avg"], rows), "",
           f"Aggregated over: {over}. Avg = mean over benchmarks of each run that has all of them.", "",
           "### Deltas (points): vs base / vs D", ""]
    drows = []
    for r in res["table4"]:
        if r["arm"] == "base":
            continue
        vb, vd = r["delta_vs_base"] or {}, r["delta_vs_D"] or {}
        drows.append([r["arm"], *[f"{_pts(vb.get(b), True)} / {_pts(vd.get(b), True)}" for b in [*benches, "avg"]]])
    return out + _table(["Arm", *[labels[b] for b in benches], "Avg"], drows) + [""]


def _md_table5(res: dict, labels: dict[str, str]) -> list[str]:
    out = ["## Table 5: A − D per benchmark (points, paired bootstrap over items)", "",
           "Each A run is paired with the D runs of the same training seed (and control seed where A has one); "
           f"item-level differences are pooled over pairs; 95 % percentile CI, {N_BOOT} resamples. "
           "Macro-averaged benchmarks (MGSM) are pooled per item here.", ""]
    rows = [[labels[b], _pts(v["diff"], True), f"[{_pts(v['ci_low'], True)}, {_pts(v['ci_high'], True)}]",
             str(v["n_pairs"]), str(v["n_items"])] for b, v in res["table5_a_minus_d"].items()]
    out += _table(["Benchmark", "A − D", "95 % CI", "pairs", "items"], rows) + [""]
    if res.get("a_minus_base"):
        rows = [[labels[b], _pts(v["diff"], True), f"[{_pts(v['ci_low'], True)}, {_pts(v['ci_high'], True)}]",
                 str(v["n_items"])] for b, v in res["a_minus_base"].items()]
        out += ["A − base model, paired the same way:", "",
                *_table(["Benchmark", "A − base", "95 % CI", "items"], rows), ""]
    return out


def _md_null(res: dict, labels: dict[str, str]) -> list[str]:
    rows = []
    for b, v in res["null"].items():
        rng = f"{_pts(min(v['null']))}–{_pts(max(v['null']))}" if v["null"] else "—"
        note = "" if v["meaningful"] else f"too few D runs (min p {v['min_p']:.3g})"
        rows.append([labels[b], str(v["n"]), rng, _pts(v["a_mean"]), "—" if v["p"] is None else f"{v['p']:.3g}", note])
    out = ["## Random-control null (arm D)", "",
           "Empirical p = (1 + #{D runs ≥ A's mean}) / (n + 1), one-sided.", "",
           *_table(["Benchmark", "D runs", "D range", "A mean", "empirical p", "note"], rows), ""]
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
               ["partial r given depth (p)", f"{a['partial_r']:+.3f} ({a['partial_p']:.3g})"],
               ["circular-shift p", f"{a['circular_shift_p']:.3g}"]]), ""]
    if a.get("interpretation"):
        out += [a["interpretation"], ""]
    return out + [f"![{f}]({f})" for f in ("profiles.png", "rank_scatter.png") if f in res.get("figures", [])] + [""]


def _md_cost(res: dict) -> list[str]:
    c = res["cost"]
    rows = [[arm, str(v["runs"]), f"{v['gpu_hours']:.3f}", f"${v['cost']:.2f}", f"{v['wall_s'] / 3600:.2f}"]
            for arm, v in c["per_arm"].items()]
    t = c["total"]
    rows.append(["total", str(t["runs"]), f"{t['gpu_hours']:.3f}", f"${t['cost']:.2f}", f"{t['wall_s'] / 3600:.2f}"])
    out = ["## Compute and cost", "", f"Rate: ${c['cost_per_gpu_hour']:.2f} per GPU-hour.", "",
           *_table(["Arm", "runs", "GPU-hours", "cost", "wall hours"], rows), ""]
    if t["gpu_hours"] == 0:
        out += ["No GPU was used (CPU run): 0 GPU-hours, no GPU cost.", ""]
    return out


def render_markdown(res: dict, labels: dict[str, str]) -> tuple[str, str]:
    """``report.md`` text and its headline paragraph."""
    cfg = res["study"]
    head = headline(res, labels)
    lines = [f"# Study report: {cfg['name']}", "",
             f"Model: {cfg.get('model') or 'unknown'}; top-k: {cfg.get('top_k') or 'n/a'}; "
             f"benchmarks: {', '.join(labels[b] for b in res['benchmarks']) or 'none'}.", "",
             f"**Headline.** {head}", "",
             *_md_table4(res, labels), *_md_table5(res, labels), *_md_null(res, labels), *_md_coloc(res),
             *(["![scores per arm](arms.png)", ""] if "arms.png" in res.get("figures", []) else []),
             *_md_cost(res), "## Problems", ""]
    lines += [f"- {p}" for p in res["problems"]] or ["None: every expected file was found."]
    return "\n".join(lines) + "\n", head
