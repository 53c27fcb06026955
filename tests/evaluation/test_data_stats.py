"""--limit stratification, the offline data readers, and the bootstrap CI against scipy."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from coloc_ray.errors import UserError
from coloc_ray.evaluation import data
from coloc_ray.evaluation.registry import BENCHMARKS, get_benchmarks
from coloc_ray.evaluation.stats import bootstrap_ci, summarize


def _records(sizes: dict[str, int]) -> list[dict]:
    return [{"item_id": f"{s}/{i}", "subject": s} for s, n in sizes.items() for i in range(n)]


def test_limit_is_per_benchmark_and_spread_evenly():
    recs = _records({"a": 50, "b": 50, "c": 50, "d": 50})
    got = data.stratified_limit(recs, 20, "subject", seed=0)
    assert len(got) == 20
    assert Counter(r["subject"] for r in got) == {"a": 5, "b": 5, "c": 5, "d": 5}


def test_limit_below_strata_takes_distinct_strata_and_exhausted_strata_yield():
    recs = _records({s: 30 for s in "abcdefghij"})
    got = data.stratified_limit(recs, 4, "subject", seed=1)
    assert len({r["subject"] for r in got}) == 4
    small = _records({"a": 1, "b": 100})
    got = data.stratified_limit(small, 10, "subject", seed=0)
    assert Counter(r["subject"] for r in got) == {"a": 1, "b": 9}


def test_limit_is_seeded_and_keeps_source_order():
    recs = _records({"a": 40, "b": 40})
    one = data.stratified_limit(recs, 10, "subject", seed=3)
    assert one == data.stratified_limit(recs, 10, "subject", seed=3)
    assert one != data.stratified_limit(recs, 10, "subject", seed=4)
    idx = [recs.index(r) for r in one]
    assert idx == sorted(idx)
    assert data.stratified_limit(recs, None, "subject", 0) == recs
    with pytest.raises(UserError):
        data.stratified_limit(recs, 0, "subject", 0)


def test_offline_sources_read_with_strata():
    mmlu, dev = data.load_mmlu()
    assert len(mmlu) == 14042 and len(dev) == 57 and all(len(v) == 5 for v in dev.values())
    assert isinstance(mmlu[0]["choices"][0], str) and mmlu[0]["answer"] in range(4)
    mgsm, shots = data.load_mgsm()
    assert len(mgsm) == 250 * 11 and all(len(v) == 8 for v in shots.values())
    assert shots["en"][0]["answer_number"] == 11 and shots["en"][0]["question"].startswith("Question:")
    from coloc_ray.evaluation.tasks.utils import MATH_FEWSHOT

    math = data.load_math()
    assert len(math) == 5000 and len({r["type"] for r in math}) == 7  # no few-shot problem is a test item
    assert not {s["problem"] for s in MATH_FEWSHOT} & {r["problem"] for r in math}
    arc, train = data.load_arc()
    assert len(arc) == 1172 and len(train) == 1119 and set(arc[0]["choices"]) == {"text", "label"}


def test_gpqa_extracts_into_cache_not_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("COLOC_CACHE", str(tmp_path))
    rows = data.load_gpqa()
    assert len(rows) == 448 and {r["domain"] for r in rows} == {"Biology", "Chemistry", "Physics"}
    assert (tmp_path / "gpqa" / "gpqa_main.csv").is_file()


def test_missing_data_file_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COLOC_DATA", str(tmp_path))
    with pytest.raises(UserError, match="COLOC_DATA"):
        data.load_arc()


def test_registry_names_and_errors():
    assert list(BENCHMARKS)[:6] == ["mmlu", "gpqa", "humanevalplus", "math", "mgsm", "arc_challenge"]
    with pytest.raises(UserError, match="valid: mmlu, gpqa"):
        get_benchmarks("mmlu,hellaswag")


def test_bootstrap_matches_scipy_percentile():
    from scipy.stats import bootstrap

    x = np.random.default_rng(0).random(200) < 0.6
    score, lo, hi = bootstrap_ci(x, n_resamples=20000, seed=1)
    ref = bootstrap((x.astype(float),), np.mean, n_resamples=20000, method="percentile",
                    random_state=np.random.default_rng(2)).confidence_interval
    assert score == pytest.approx(x.mean())
    assert lo == pytest.approx(ref.low, abs=0.01) and hi == pytest.approx(ref.high, abs=0.01)


def test_macro_score_is_mean_of_stratum_means():
    items = ([{"correct": True, "lang": "en"}] * 3 + [{"correct": False, "lang": "en"}]
             + [{"correct": False, "lang": "de"}] * 2)
    out = summarize(items, "accuracy", "lang", macro=True, n_resamples=500)
    assert out["score"] == pytest.approx((0.75 + 0.0) / 2) and out["n"] == 6
    assert out["per_lang"] == {"de": 0.0, "en": 0.75}
    assert out["ci_low"] <= out["score"] <= out["ci_high"]
