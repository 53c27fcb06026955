"""``coloc eval`` end to end on tiny-gqa, and bad inputs: one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.evaluation.conftest import make_adapter


def _fails_cleanly(res, out, *needles):
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("coloc: error:") and "Traceback" not in res.stderr
    for n in needles:
        assert n in last
    assert not (out / "eval.json").exists() and not (out / "items").exists()


def test_unknown_benchmark_lists_valid_ones(tmp_path):
    out = tmp_path / "o"
    res = run_cli("eval", "--model", "tiny-gqa", "--benchmarks", "mmlu,hellaswag", "--out", str(out))
    _fails_cleanly(res, out, "'hellaswag'", "valid: mmlu, gpqa, humanevalplus, math, mgsm, arc_challenge")


def test_missing_data_file(tmp_path):
    out = tmp_path / "o"
    res = run_cli("eval", "--model", "tiny-gqa", "--benchmarks", "arc_challenge", "--out", str(out),
                  env={"COLOC_DATA": str(tmp_path / "nodata")})
    _fails_cleanly(res, out, "ARC-Challenge-Test.jsonl", "COLOC_DATA")


def test_adapter_for_another_model(tmp_path):
    other = make_adapter(tmp_path / "qwen", lora="random", garfa=None, model_name="tiny-qwen2")
    out = tmp_path / "o"
    res = run_cli("eval", "--model", "tiny-gqa", "--adapter", str(other), "--benchmarks", "arc_challenge",
                  "--no-tracking", "--out", str(out))
    _fails_cleanly(res, out, "model_type")


def test_zero_adapter_is_refused_by_the_guard(tmp_path):
    zero = make_adapter(tmp_path / "zero", lora="zero", garfa="zero")
    out = tmp_path / "o"
    res = run_cli("eval", "--model", "tiny-gqa", "--adapter", str(zero), "--benchmarks", "arc_challenge",
                  "--no-tracking", "--out", str(out))
    _fails_cleanly(res, out, "leaves the logits unchanged")


def test_eval_with_adapter_writes_scores_items_and_mlflow(tmp_path, tracking_uri):
    from coloc_ray.tracking import Tracker, read_run

    with Tracker(tracking_uri, run_name="finetune") as ft:
        parent = ft.run_id
    adapter = make_adapter(tmp_path / "ad", lora="random", garfa="random")
    (adapter / "metrics.json").write_text(json.dumps({"mlflow_run_id": parent}))
    out = tmp_path / "o"
    res = run_cli("eval", "--model", "tiny-gqa", "--adapter", str(adapter), "--benchmarks",
                  "gpqa,humanevalplus", "--limit", "3", "--max-new-tokens", "4", "--batch-size", "4",
                  "--tracking-uri", tracking_uri, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    ev = json.loads((out / "eval.json").read_text())
    assert list(ev) == ["gpqa", "humanevalplus"]
    for name, r in ev.items():
        items = [json.loads(x) for x in (out / "items" / f"{name}.jsonl").read_text().splitlines()]
        assert r["n"] == len(items) == 3
        assert r["score"] == pytest.approx(sum(i["correct"] for i in items) / 3)
        assert r["ci_low"] <= r["score"] <= r["ci_high"]
        assert all({"id", "prompt_hash", "prediction", "target", "correct"} <= set(i) for i in items)
        assert all(len(i["prompt_hash"]) == 64 for i in items)
    assert ev["gpqa"]["metric"] == "accuracy" and ev["humanevalplus"]["metric"] == "pass@1"
    assert len({json.loads(x)["domain"] for x in (out / "items" / "gpqa.jsonl").read_text().splitlines()}) == 3
    cfg = json.loads((out / "eval_config.json").read_text())
    assert cfg["guard"]["lora_max_abs_logit_diff"] > 0 and cfg["config"]["adapter"] == str(adapter)
    run = read_run(cfg["mlflow_run_id"], tracking_uri)
    assert run["tags"]["mlflow.parentRunId"] == parent and run["status"] == "FINISHED"
    assert run["metrics"]["gpqa/score"] == pytest.approx(ev["gpqa"]["score"])
    assert run["params"]["eval.limit"] == "3" and "eval" in run["artifacts"]
