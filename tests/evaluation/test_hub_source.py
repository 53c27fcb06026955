"""--source hub runs lm-eval's standard tasks (METHOD 8 table): the names coloc hands to lm-eval must be tasks
lm-eval itself has installed (its TaskManager index), each benchmark with its METHOD 8 shots.

The hub is unreachable here, so ``harness.run_hub`` (what would load the hub datasets) is replaced by a
recorder; the names it receives are checked against lm-eval's real index, not against a list of our own.
What hub mode scores under ``--limit`` is tested with lm-eval itself in test_hub_limit.py."""

from __future__ import annotations

import pytest

from coloc_ray.evaluation import harness
from coloc_ray.evaluation.api import run_eval
from coloc_ray.evaluation.config import EvalConfig
from coloc_ray.evaluation.registry import BENCHMARKS

# METHOD 8's table, written out independently of the registry: shots per benchmark.
METHOD8_SHOTS = {"mmlu": 5, "gpqa": 0, "math": 4, "mgsm": 8, "arc_challenge": 25}


@pytest.fixture(scope="module")
def installed_tasks() -> set[str]:
    """Every task, group and tag lm-eval's own TaskManager indexes in this install (~10 s)."""
    from lm_eval.tasks import TaskManager

    return set(TaskManager().all_tasks)


def test_hub_source_uses_standard_tasks(tmp_path, monkeypatch, installed_tasks):
    calls = []

    def fake_run_hub(lm, bench, *, limit, seed, max_gen_toks=None):
        calls.append((bench.hub_task, bench.shots, limit, seed))
        doc = {"question": "q", "subject": "anatomy"}
        return {bench.hub_task: [{"doc_id": 0, "doc": doc, "target": 1, "arguments": [("ctx", " A"), ("ctx", " B")],
                                  "filtered_resps": [(-2.0, False), (-1.0, False)], "resps": [], "filter": "none",
                                  "acc": 1.0}]}

    monkeypatch.setattr(harness, "run_hub", fake_run_hub)
    monkeypatch.setattr(harness, "make_lm", lambda *a, **k: object())
    cfg = EvalConfig(model="tiny-gqa", benchmarks=["mmlu", "arc_challenge", "gpqa"], source="hub", limit=7,
                     seed=3, tracking=False, n_bootstrap=200)
    res = run_eval(cfg, tmp_path / "o")
    assert [c[0] for c in calls] and all(c[0] in installed_tasks for c in calls), \
        f"not an installed lm-eval task: {[c[0] for c in calls if c[0] not in installed_tasks]}"
    assert [(c[1], c[2], c[3]) for c in calls] == [(METHOD8_SHOTS[b], 7, 3) for b in cfg.benchmarks]
    assert res["mmlu"]["score"] == 1.0 and res["mmlu"]["n"] == 1
    assert res["mmlu"]["items_per_task"] == {"mmlu": 1}
    row = (tmp_path / "o" / "items" / "mmlu.jsonl").read_text()
    assert '"id": "mmlu/0"' in row and '"prediction": 1' in row


@pytest.mark.parametrize("name", [n for n, b in BENCHMARKS.items() if b.runner == "lmeval"])
def test_every_hub_task_is_installed_in_lm_eval(name, installed_tasks):
    bench = BENCHMARKS[name]
    assert bench.hub_task in installed_tasks, f"{name}: {bench.hub_task!r} is not a task lm-eval knows"
    assert bench.shots == METHOD8_SHOTS[name]


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
