"""MATH is scored by boxed EM and, beside it, by lm-eval's own equivalence checks (minerva_math is_equiv and
math_verify), on real MATH items of the offline data with hand-made answers where EM and equivalence differ.

References: the truth of each case is written by hand (0.5 is 1/2, sqrt(8) is 2 sqrt(2), 4/3 is not 3/4), and the
columns are compared with lm-eval's functions called directly on the same strings.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest

from coloc_ray.evaluation import data, harness, math_equiv
from coloc_ray.evaluation.registry import BENCHMARKS
from coloc_ray.evaluation.stats import summarize
from coloc_ray.evaluation.tasks.utils import last_boxed_only_string, normalize_final_answer, remove_boxed

mm = pytest.importorskip("lm_eval.tasks.minerva_math.utils", reason="lm-eval's math extra: " + math_equiv.INSTALL_HINT)

# (item id, model output, boxed EM, equivalent) -- gold answers: math/261 \frac{1}{2}, math/1108 2\sqrt{2},
# math/985 \frac{3}{4}
CASES = [
    ("math/261", "We get $x = \\frac{2}{4}$, so the answer is $\\boxed{0.5}$.", False, True),
    ("math/1108", "The distance is $\\boxed{\\sqrt{8}}$.", False, True),
    ("math/985", "So the probability is $\\boxed{\\frac{3}{4}}$.", True, True),
    ("math/985", "So the probability is $\\boxed{\\frac{4}{3}}$.", False, False),
    ("math/261", "I do not know.", False, False),
]


def _samples() -> dict[str, list[dict]]:
    """lm-eval logged samples of the offline MATH task (its doc = our record + process_math's answer)."""
    rows = {r["item_id"]: r for r in data.load_math()}
    out = []
    for k, (iid, text, _, _) in enumerate(CASES):
        r = rows[iid]
        gold = normalize_final_answer(remove_boxed(last_boxed_only_string(r["solution"])))
        doc = {**r, "answer": gold}
        out.append({"doc_id": k, "doc": doc, "target": gold, "filter": "none",
                    "arguments": [(f"Problem:\n{r['problem']}\n\nSolution:", {})], "filtered_resps": [text],
                    "resps": [[text]], "exact_match": 0})
    return {"coloc_math": out}


def test_gold_answers_are_the_ones_the_cases_assume():
    docs = [s["doc"] for s in _samples()["coloc_math"]]
    assert [d["answer"] for d in docs] == ["\\frac{1}{2}", "2\\sqrt{2}", "\\frac{3}{4}", "\\frac{3}{4}", "\\frac{1}{2}"]


def test_boxed_em_and_lm_eval_equivalence_per_item():
    samples = _samples()
    rows = harness.samples_to_items(samples, BENCHMARKS["math"])
    assert [r["correct"] for r in rows] == [c[2] for c in CASES]
    assert [r["equiv"] for r in rows] == [c[3] for c in CASES]
    for r, s in zip(rows, samples["coloc_math"]):  # the columns are lm-eval's own verdicts on these strings
        assert r["equiv"] == (r["prediction"] != "[invalidanswer]" and mm.is_equiv(r["prediction"], s["doc"]["answer"]))
        assert r["math_verify"] == bool(mm.process_results(s["doc"], s["filtered_resps"])["math_verify"])
    assert rows[0]["math_verify"] and rows[1]["math_verify"] and not rows[3]["math_verify"]


def test_eval_json_reports_both_metrics_with_labels():
    rows = harness.samples_to_items(_samples(), BENCHMARKS["math"])
    res = summarize(rows, BENCHMARKS["math"].metric, "type", False, seed=0, n_resamples=200)
    assert res["metric"] == "boxed_exact_match" and res["score"] == pytest.approx(1 / 5)
    assert res["equiv"]["score"] == pytest.approx(3 / 5) and res["equiv"]["n"] == 5
    assert res["equiv"]["ci_low"] <= 0.6 <= res["equiv"]["ci_high"]
    assert "is_equiv" in res["equiv"]["metric"] and "math_verify" in res["math_verify"]["metric"]
    assert res["math_verify"]["score"] == pytest.approx(sum(r["math_verify"] for r in rows) / 5)


def test_off_the_main_thread_the_checks_run_in_a_child():
    # lm-eval's is_equiv times out with SIGALRM: in a thread it silently says False for 0.5 = 1/2
    seen = {}
    t = threading.Thread(target=lambda: seen.update(direct=mm.is_equiv("0.5", "\\frac{1}{2}")))
    t.start()
    t.join()
    assert seen["direct"] is False and mm.is_equiv("0.5", "\\frac{1}{2}") is True
    main = harness.samples_to_items(_samples(), BENCHMARKS["math"])
    t = threading.Thread(target=lambda: seen.update(rows=harness.samples_to_items(_samples(), BENCHMARKS["math"])))
    t.start()
    t.join()
    assert [(r["equiv"], r["math_verify"]) for r in seen["rows"]] == [(r["equiv"], r["math_verify"]) for r in main]


def test_without_the_math_extra_the_columns_are_none_and_say_why(monkeypatch, caplog):
    monkeypatch.setattr(math_equiv, "missing_extra", lambda: "ModuleNotFoundError: No module named 'math_verify'")
    with caplog.at_level(logging.WARNING, logger=math_equiv.__name__):
        rows = harness.samples_to_items(_samples(), BENCHMARKS["math"])
    assert all(r["equiv"] is None and r["math_verify"] is None for r in rows)
    assert [r["correct"] for r in rows] == [c[2] for c in CASES]  # boxed EM does not need the extra
    assert "coloc-ray[math]" in caplog.text
    res = summarize(rows, "boxed_exact_match", seed=0, n_resamples=200)
    assert res["equiv"]["score"] is None and res["equiv"]["n"] == 0


def test_offline_math_eval_records_equivalence(tmp_path):
    """The real lm-eval run (tiny model, 2 items): eval.json and items/math.jsonl carry both metrics."""
    from coloc_ray.evaluation.api import run_eval
    from coloc_ray.evaluation.config import EvalConfig

    cfg = EvalConfig(model="tiny-gqa", benchmarks=["math"], limit=2, max_new_tokens=8, tracking=False,
                     n_bootstrap=200)
    res = run_eval(cfg, tmp_path / "o")["math"]
    rows = [json.loads(x) for x in (tmp_path / "o" / "items" / "math.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and res["equiv"]["n"] == 2 and res["math_verify"]["n"] == 2
    gold = {r["item_id"]: r for r in data.load_math()}
    for r in rows:
        assert r["equiv"] == (r["prediction"] != "[invalidanswer]" and bool(mm.is_equiv(r["prediction"], r["target"])))
        doc = {"answer": r["target"], "solution": gold[r["id"]]["solution"]}
        assert r["math_verify"] == bool(mm.process_results(doc, [r["generation"]])["math_verify"])
