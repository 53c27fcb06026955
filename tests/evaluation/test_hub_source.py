"""--source hub passes lm-eval's standard task names, shots and --limit straight through (METHOD 8 table).

The hub itself is unreachable here, so lm-eval's ``simple_evaluate`` is replaced by a recorder that returns
one logged sample per task in lm-eval's format."""

from __future__ import annotations

import pytest

from coloc_ray.evaluation import harness
from coloc_ray.evaluation.api import run_eval
from coloc_ray.evaluation.config import EvalConfig


def test_hub_source_uses_standard_tasks(tmp_path, monkeypatch):
    calls = []

    def fake_run_tasks(lm, tasks, *, include_dir, num_fewshot, limit, seed, max_gen_toks=None):
        calls.append((tuple(tasks), include_dir, num_fewshot, limit))
        doc = {"question": "q", "subject": "anatomy"}
        return {tasks[0]: [{"doc_id": 0, "doc": doc, "target": 1, "arguments": [("ctx", " A"), ("ctx", " B")],
                            "filtered_resps": [(-2.0, False), (-1.0, False)], "resps": [], "filter": "none",
                            "acc": 1.0}]}

    monkeypatch.setattr(harness, "run_tasks", fake_run_tasks)
    monkeypatch.setattr(harness, "make_lm", lambda *a, **k: object())
    cfg = EvalConfig(model="tiny-gqa", benchmarks=["mmlu", "arc_challenge", "gpqa"], source="hub", limit=7,
                     tracking=False, n_bootstrap=200)
    res = run_eval(cfg, tmp_path / "o")
    assert calls == [(("mmlu",), None, 5, 7), (("arc_challenge",), None, 25, 7), (("gpqa_main_zeroshot",), None, 0, 7)]
    assert res["mmlu"]["score"] == 1.0 and res["mmlu"]["n"] == 1
    row = (tmp_path / "o" / "items" / "mmlu.jsonl").read_text()
    assert '"id": "mmlu/0"' in row and '"prediction": 1' in row


def test_config_rejects_unknown_keys_and_bad_values():
    from pydantic import ValidationError

    from coloc_ray.errors import UserError

    with pytest.raises(ValidationError):
        EvalConfig(model="tiny-gqa", shots=3)
    with pytest.raises(ValidationError):
        EvalConfig(model="tiny-gqa", limit=0)
    with pytest.raises(UserError, match="valid:"):
        EvalConfig(model="tiny-gqa", benchmarks="mmlu,nope")
    assert EvalConfig(model="m", benchmarks="arc_challenge, mmlu").benchmarks == ["arc_challenge", "mmlu"]
