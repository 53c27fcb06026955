"""build_report on a synthetic study: every table number against an independent computation."""

from __future__ import annotations

import json
import shutil
import statistics

import numpy as np
import pytest

from coloc_ray.report.build import build_report
from tests.report.conftest import BENCHES, CONTROL_SEEDS, GPU_HOURS, RATE, TRAIN_SEEDS, trial_id


def _scores(study, tid):
    d = study / ("base" if tid == "base" else f"trials/{tid}")
    return json.loads((d / "result.json").read_text())["eval"]


def _items(study, tid, bench):
    d = study / ("base" if tid == "base" else f"trials/{tid}")
    rows = [json.loads(x) for x in (d / "eval" / "items" / f"{bench}.jsonl").read_text().splitlines()]
    return {r["id"]: float(r["correct"]) for r in rows}


def _row(res, arm):
    return next(r for r in res["table4"] if r["arm"] == arm)


def test_table4_against_independent_aggregation(study):
    res = build_report(study)
    assert res["problems"] == []
    assert res["benchmarks"] == ["mmlu", "humanevalplus", "arc_challenge"]
    assert res["table4"][0]["arm"] == "base"  # the base model is always the first row
    d_ids = [trial_id("D", c, t) for c in CONTROL_SEEDS for t in TRAIN_SEEDS]
    a_ids = [trial_id("A", None, t) for t in TRAIN_SEEDS]
    base = {b: _scores(study, "base")[b]["score"] for b in BENCHES}
    for arm, ids in (("A", a_ids), ("D", d_ids)):
        row = _row(res, arm)
        for b in BENCHES:
            vals = [_scores(study, t)[b]["score"] for t in ids]
            assert row["scores"][b]["mean"] == pytest.approx(statistics.mean(vals))
            assert row["scores"][b]["std"] == pytest.approx(statistics.stdev(vals))
            assert row["scores"][b]["n"] == len(ids)
            assert row["delta_vs_base"][b] == pytest.approx(statistics.mean(vals) - base[b])
        per_run = [statistics.mean(_scores(study, t)[b]["score"] for b in BENCHES) for t in ids]
        assert row["avg"]["mean"] == pytest.approx(statistics.mean(per_run))
        assert row["avg"]["std"] == pytest.approx(statistics.stdev(per_run))
    a, d = _row(res, "A"), _row(res, "D")
    assert a["delta_vs_D"]["avg"] == pytest.approx(a["avg"]["mean"] - d["avg"]["mean"])
    assert _row(res, "base")["avg"]["mean"] == pytest.approx(statistics.mean(base.values()))
    assert a["aggregated_over"] == "training seeds" and d["aggregated_over"].startswith("control seeds")


def _holm(ps: dict) -> dict:
    # Holm (1979) from its definition: ascending p, multiply by (m - rank + 1), running max, cap at 1.
    keys, out, best = sorted(ps, key=ps.get), {}, 0.0
    for rank, k in enumerate(keys, start=1):
        best = max(best, (len(keys) - rank + 1) * ps[k])
        out[k] = min(1.0, best)
    return out


def test_table5_runs_are_the_unit_against_direct_computation(study):
    """A - D: the item-mean difference of arm means, runs counted once each, Holm across benchmarks,
    the average as its own claim. (The interval itself is checked by simulation in tests/analysis.)"""
    res = build_report(study)
    d_ids = [trial_id("D", c, t) for c in CONTROL_SEEDS for t in TRAIN_SEEDS]
    a_ids = [trial_id("A", None, t) for t in TRAIN_SEEDS]
    for b in BENCHES:
        ia = [_items(study, t, b) for t in a_ids]
        idd = [_items(study, t, b) for t in d_ids]
        ids = sorted(ia[0])
        diff = np.mean([np.mean([x[k] for x in ia]) - np.mean([x[k] for x in idd]) for k in ids])
        t5 = res["table5_a_minus_d"][b]
        assert t5["diff"] == pytest.approx(diff)
        assert (t5["n_a"], t5["n_b"], t5["n_items"]) == (len(a_ids), len(d_ids), BENCHES[b])
        assert t5["ci_low"] < t5["diff"] < t5["ci_high"]
        # CI and p agree: the interval excludes 0 exactly when p < 0.05
        assert (t5["ci_low"] > 0 or t5["ci_high"] < 0) == (t5["p"] < 0.05)
    raw = {b: res["table5_a_minus_d"][b]["p"] for b in BENCHES}
    for b, adj in _holm(raw).items():
        assert res["table5_a_minus_d"][b]["p_holm"] == pytest.approx(adj)
    avg = res["a_minus_d_avg"]
    assert avg["diff"] == pytest.approx(_row(res, "A")["avg"]["mean"] - _row(res, "D")["avg"]["mean"])
    assert avg["ci_low"] < avg["diff"] < avg["ci_high"]
    assert res["a_minus_base_avg"]["diff"] == pytest.approx(_row(res, "A")["delta_vs_base"]["avg"])


def test_heldout_loss_is_a_first_class_metric(study):
    from tests.report.conftest import base_losses, heldout_losses

    res = build_report(study)
    assert res["extra_metrics"] == ["heldout_loss"] and "heldout_loss" not in res["benchmarks"]
    a_runs = [heldout_losses("A", None, t) for t in TRAIN_SEEDS]
    d_runs = [heldout_losses("D", c, t) for c in CONTROL_SEEDS for t in TRAIN_SEEDS]
    a_means, d_means = [np.mean(list(x.values())) for x in a_runs], [np.mean(list(x.values())) for x in d_runs]
    assert _row(res, "A")["scores"]["heldout_loss"]["mean"] == pytest.approx(np.mean(a_means))
    assert _row(res, "D")["scores"]["heldout_loss"]["std"] == pytest.approx(statistics.stdev(d_means))
    # the base model's held-out loss is the fine-tunes' step-0 loss on the same records
    base_mean = np.mean(list(base_losses().values()))
    assert _row(res, "base")["scores"]["heldout_loss"]["mean"] == pytest.approx(base_mean)
    ab = res["a_minus_base"]["heldout_loss"]
    assert ab["diff"] == pytest.approx(np.mean(a_means) - base_mean) and ab["n_items"] == 12
    t5 = res["table5_a_minus_d"]["heldout_loss"]
    assert t5["diff"] == pytest.approx(np.mean(a_means) - np.mean(d_means))
    assert t5["p_holm"] == t5["p"]  # its own claim, outside the benchmark family
    assert t5["ci_high"] < 0  # A's loss is 0.2 nats lower by construction
    # the null for a lower-is-better metric counts D units at or below A
    e = res["null"]["heldout_loss"]
    d_units = [np.mean([np.mean(list(heldout_losses("D", c, t).values())) for t in TRAIN_SEEDS]) for c in CONTROL_SEEDS]
    assert sorted(e["null"]) == pytest.approx(sorted(d_units))
    assert e["p"] == pytest.approx((1 + sum(x <= np.mean(a_means) for x in d_units)) / (len(d_units) + 1))
    md = (study / "report" / "report.md").read_text()
    assert "held-out loss" in md.split("## Table 4", 1)[1].split("\n", 3)[2]
    assert f"| {base_mean:.3f} (n=1) |" in md.split("| base model (no fine-tuning) |", 1)[1].split("\n", 1)[0]
    assert "Held-out loss (lower is better): A's is lower (better) than D's" in res["headline"]
    assert "Against the base model (the step-0 loss): A − base = " in res["headline"]


def test_heldout_falls_back_to_run_level_final_eval_loss(study):
    for p in (study / "trials").glob("*/result.json"):
        rec = json.loads(p.read_text())
        del rec["finetune"]["heldout_record_losses"], rec["finetune"]["heldout_record_losses_step0"]
        p.write_text(json.dumps(rec))
    res = build_report(study)
    t5 = res["table5_a_minus_d"]["heldout_loss"]
    assert t5["diff"] == pytest.approx(1.8 - 2.0) and t5["n_items"] == 0
    assert t5["interval"].startswith("runs only")
    # no step-0 record anywhere: the base model's held-out loss is n/a, said once
    assert _row(res, "base")["scores"]["heldout_loss"]["mean"] is None
    assert res["a_minus_base"]["heldout_loss"]["diff"] is None
    assert "base model's held-out loss is n/a" in res["headline"]


def test_null_p_cost_and_markdown(study):
    res = build_report(study)
    for b in BENCHES:
        # like with like: A's mean over its training seeds vs D's mean over the same seeds, per control seed
        null = [statistics.mean(_scores(study, trial_id("D", c, t))[b]["score"] for t in TRAIN_SEEDS)
                for c in CONTROL_SEEDS]
        a_mean = statistics.mean(_scores(study, trial_id("A", None, t))[b]["score"] for t in TRAIN_SEEDS)
        e = res["null"][b]
        assert sorted(e["null"]) == pytest.approx(sorted(null))
        assert e["p"] == pytest.approx((1 + sum(x >= a_mean for x in null)) / (len(null) + 1))
        assert e["meaningful"] is False  # 3 control seeds cannot give p < 0.05
    for b, adj in _holm({b: res["null"][b]["p"] for b in BENCHES}).items():
        assert res["null"][b]["p_holm"] == pytest.approx(adj)
    n_trials = len(TRAIN_SEEDS) * (1 + 3 * len(CONTROL_SEEDS))
    assert res["cost"]["total"]["gpu_hours"] == pytest.approx(n_trials * GPU_HOURS)
    assert res["cost"]["total"]["cost"] == pytest.approx(n_trials * GPU_HOURS * RATE)
    out = study / "report"
    md = (out / "report.md").read_text()
    para = md.split("**Headline.**", 1)[1].split("\n", 1)[0]
    a, d = _row(res, "A"), _row(res, "D")
    assert f"{100 * a['avg']['mean']:.2f} vs {100 * d['avg']['mean']:.2f}" in para
    assert "too few control seeds" in para
    assert "| base model (no fine-tuning) |" in md and "vs base / vs D" in md
    assert json.loads((out / "results.json").read_text())["headline"] == res["headline"]
    for png in ("null.png", "arms.png", "profiles.png", "rank_scatter.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert res["colocalization"]["num_layers"] == 8  # recomputed from the probes (no analysis.json)
    unc = res["colocalization"]["sensitivity_uncertainty"]  # bootstrap over the probe's pairs
    assert unc["chosen"] == res["colocalization"]["sensitive_layers"] and len(unc["band_low"]) == 8
    assert f"P(layer in top-3) for the chosen layers: {unc['chosen'][0]}: " in md
    assert "depth-surrogate p" in md and "not a depth control" in md


def test_missing_trial_and_benchmark_are_reported(study):
    (study / "trials" / trial_id("D", 124, 1) / "result.json").unlink()
    rec_path = study / "trials" / trial_id("B", 123, 0) / "result.json"
    rec = json.loads(rec_path.read_text())
    del rec["eval"]["arc_challenge"]
    rec_path.write_text(json.dumps(rec))
    shutil.rmtree(study / "trials" / trial_id("C", 125, 1) / "eval" / "items")
    res = build_report(study)
    probs = "\n".join(res["problems"])
    assert f"trial {trial_id('D', 124, 1)}" in probs
    assert "arm D: no result for control seed 124, training seed 1" in probs
    assert f"trial {trial_id('B', 123, 0)}: no score for benchmark arc_challenge" in probs
    assert f"trial {trial_id('C', 125, 1)}: no per-item results" in probs
    assert _row(res, "D")["scores"]["mmlu"]["n"] == 5
    assert _row(res, "B")["scores"]["arc_challenge"]["n"] == 5
    assert _row(res, "B")["avg"]["n"] == 5  # the run without ARC is left out of Avg
    assert res["table5_a_minus_d"]["mmlu"]["n_b"] == 5  # D's five remaining runs, each counted once
    md = (study / "report" / "report.md").read_text()
    assert "no score for benchmark arc_challenge" in md.split("## Problems", 1)[1]


def test_partial_study_without_base_or_d(tmp_path, study):
    shutil.rmtree(study / "base")
    for c in CONTROL_SEEDS:
        for t in TRAIN_SEEDS:
            shutil.rmtree(study / "trials" / trial_id("D", c, t))
    res = build_report(study)
    assert _row(res, "base")["n_units"] == 0 and _row(res, "base")["avg"]["mean"] is None
    assert any("base model" in p for p in res["problems"])
    assert "No A − D comparison" in res["headline"] and "base model's evaluation is missing" in res["headline"]
    empty = build_report(tmp_path / "empty")
    assert any("no trials" in p for p in empty["problems"])
    assert (tmp_path / "empty" / "report" / "report.md").is_file()


def test_contract_base_layout_and_saved_analysis(study):
    # The contract's layout: base/eval.json + base/items/<bench>.jsonl, no base/result.json.
    base = study / "base"
    (base / "result.json").unlink()
    shutil.move(base / "eval" / "eval.json", base / "eval.json")
    shutil.move(base / "eval" / "items", base / "items")
    ana = {"spearman_r": -0.5, "spearman_p": 0.2, "permutation_p": 0.21, "top_k": 3, "sensitive_layers": [5, 6, 7],
           "rope_layers": [0, 1, 7], "overlap": 1, "expected_overlap": 1.125, "overlap_p": 0.7, "partial_r": 0.1,
           "partial_p": 0.8, "circular_shift_p": 0.5, "num_layers": 8}
    (study / "analysis").mkdir()
    (study / "analysis" / "analysis.json").write_text(json.dumps(ana))
    res = build_report(study)
    assert res["problems"] == []
    base_scores = json.loads((base / "eval.json").read_text())
    assert _row(res, "base")["scores"]["mmlu"]["mean"] == pytest.approx(base_scores["mmlu"]["score"])
    assert res["a_minus_base"]["mmlu"]["n_items"] == BENCHES["mmlu"]
    assert res["a_minus_base"]["mmlu"]["n_a"] == len(TRAIN_SEEDS)
    assert res["colocalization"]["spearman_r"] == -0.5  # the saved analysis is used, not recomputed
    assert "overlap 1 vs 1.12 expected" in res["headline"]


def test_tied_arms_are_called_level_not_above_or_below(tmp_path, monkeypatch):
    """Every arm scoring exactly like the base model (as in a short demo) must read as a tie, not an ordering."""
    import tests.report.conftest as c

    monkeypatch.setattr(c, "P_CORRECT", {arm: 0.5 for arm in c.P_CORRECT})
    monkeypatch.setattr(c, "_items", lambda arm, cs, ts: {
        b: [{"id": f"{b}/{i}", "prompt_hash": f"h{i}", "prediction": "x", "target": "x", "correct": i % 2 == 0}
            for i in range(n)] for b, n in c.BENCHES.items()})
    study = c.build_study(tmp_path / "tied")
    res = build_report(study)
    md = (study / "report" / "report.md").read_text()
    headline = md.split("**Headline.**", 1)[1].split("\n", 1)[0]
    assert "A is level with it on average" in headline
    assert " > " not in headline.split("Ordering by Avg", 1)[1].split("(the paper", 1)[0]
    assert all(r["avg"]["mean"] == res["table4"][0]["avg"]["mean"] for r in res["table4"])
    # A tie everywhere is said once, not as a "range" from a benchmark to itself
    assert "A − D is +0.00 on every benchmark" in headline and "ranges from" not in headline
    ps = sorted({v["p"] for b, v in res["null"].items() if v["p"] is not None and b in res["benchmarks"]})
    assert len(ps) == 1  # every benchmark ties, so every benchmark has the same empirical p
    assert f"A's empirical p (Holm-adjusted) is {min(1.0, 3 * ps[0]):.3g}," in headline


def test_coloc_report_cli_rebuilds_the_report(study, tmp_path, capsys):
    from coloc_ray.cli import main

    assert main(["report", str(study)]) == 0
    out = capsys.readouterr().out
    res = json.loads((study / "report" / "results.json").read_text())
    assert res["headline"] in out and "report.md" in out
    assert set(res["table5_a_minus_d"]["mmlu"]) >= {"diff", "ci_low", "ci_high", "p", "p_holm"}
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a study folder" in capsys.readouterr().err


def test_incomplete_saved_analysis_is_recomputed_and_said(study):
    (study / "analysis").mkdir()
    (study / "analysis" / "analysis.json").write_text(json.dumps({"spearman_r": -1.0, "num_layers": 8}))
    res = build_report(study)
    assert any("analysis.json lacks" in p and "recomputed" in p for p in res["problems"])
    assert res["colocalization"]["top_k"] == 3 and "depth_surrogate_p" in res["colocalization"]
