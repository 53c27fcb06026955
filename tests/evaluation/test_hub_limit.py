"""--source hub with --limit N scores about N items per benchmark, not N per lm-eval sub-task.

lm-eval really runs here: a group named like the standard one (``mmlu``) is built from three real MMLU subjects of
the offline data (COLOC_DATA), with 6, 2 and 9 test items, and ``harness.hub_task_manager`` points at it instead of
the hub. What is checked is what lm-eval returned (its logged samples, the rows of items/mmlu.jsonl), against
counts derived here by hand and against the offline source's own cut of the same items.
"""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest

from coloc_ray.evaluation import data, harness
from coloc_ray.evaluation.offline import render_tasks
from coloc_ray.evaluation.registry import BENCHMARKS

SIZES = {"anatomy": 6, "astronomy": 2, "virology": 9}  # 17 items in three sub-tasks


@pytest.fixture()
def local_hub(tmp_path, monkeypatch):
    """A local ``mmlu`` group of three real-subject tasks that lm-eval loads with no hub; returns its items."""
    from lm_eval.tasks import TaskManager

    test, dev = data.load_mmlu()
    items = [r for s, k in SIZES.items() for r in [x for x in test if x["subject"] == s][:k]]
    inc = tmp_path / "tasks"
    names = render_tasks(BENCHMARKS["mmlu"], items, dev, inc, max_gen_toks=8)
    (inc / "group.yaml").write_text("group: mmlu\ntask:\n" + "".join(f"  - {n}\n" for n in names))
    monkeypatch.setattr(harness, "hub_task_manager",
                        lambda: TaskManager(include_path=str(inc), include_defaults=False))
    return items


def _check_spread(counts: dict[str, int], sizes: dict[str, int], n: int) -> None:
    """Hand-derived: n in total; a sub-task that is not exhausted has at most one item fewer than any other."""
    assert sum(counts.values()) == n
    assert all(counts.get(s, 0) <= sizes[s] for s in sizes)
    open_ = [counts.get(s, 0) for s in sizes if counts.get(s, 0) < sizes[s]]
    if open_:
        assert max(counts.values()) - min(open_) <= 1, counts


def test_hub_limit_is_items_per_benchmark(local_hub, tmp_path):
    from coloc_ray.evaluation.api import run_eval
    from coloc_ray.evaluation.config import EvalConfig

    cfg = EvalConfig(model="tiny-gqa", benchmarks=["mmlu"], source="hub", limit=7, seed=5, tracking=False,
                     n_bootstrap=200, batch_size=8)
    res = run_eval(cfg, tmp_path / "o")["mmlu"]
    rows = [json.loads(x) for x in (tmp_path / "o" / "items" / "mmlu.jsonl").read_text().splitlines()]
    got = Counter(r["subject"] for r in rows)  # what lm-eval returned, per sub-task
    assert len(rows) == res["n"] == 7  # lm-eval's own per-task limit scores 6 + 2 + 7 = 15
    _check_spread(got, SIZES, 7)
    assert res["items_per_task"] == {f"coloc_mmlu_{s}": k for s, k in sorted(got.items())}
    # hub and offline mean the same --limit: the very items the offline source's cut keeps.
    offline = data.stratified_limit(local_hub, 7, "subject", 5)
    assert sorted(r["id"] for r in rows) == sorted(r["item_id"] for r in offline)
    assert all(isinstance(r["correct"], bool) for r in rows)


def test_hub_limit_below_the_number_of_subtasks(local_hub, tiny):
    lm = harness.make_lm(tiny.model, tiny.tokenizer, batch_size=8)
    samples = harness.run_hub(lm, BENCHMARKS["mmlu"], limit=2, seed=0)
    rows = harness.samples_to_items(samples, BENCHMARKS["mmlu"])
    # two items from two different sub-tasks; the third sub-task is not run at all (lm-eval would read an
    # empty index list as "all of it").
    assert len(rows) == 2 and len({r["subject"] for r in rows}) == 2
    full = harness.samples_to_items(harness.run_hub(lm, BENCHMARKS["mmlu"], limit=17, seed=0), BENCHMARKS["mmlu"])
    assert Counter(r["subject"] for r in full) == SIZES


def test_hub_selection_seeded_and_domain_stratified():
    from datasets import Dataset

    rows = data.load_gpqa()  # the real GPQA main rows; "High-level domain" is the hub dataset's column name
    docs = Dataset.from_list([{"High-level domain": r["domain"], "Question": r["Question"]} for r in rows])
    tasks = {"gpqa_main_zeroshot": SimpleNamespace(eval_docs=docs)}
    field = BENCHMARKS["gpqa"].hub_stratum
    a = harness.hub_selection(tasks, 30, 0, field)
    assert a == harness.hub_selection(tasks, 30, 0, field)  # every arm scores the same items
    assert a != harness.hub_selection(tasks, 30, 1, field)
    idx = a["gpqa_main_zeroshot"]
    sizes = Counter(r["domain"] for r in rows)
    _check_spread(Counter(rows[i]["domain"] for i in idx), sizes, 30)
    # the same cut as the offline source makes of the same rows
    assert [rows[i]["item_id"] for i in idx] == [r["item_id"] for r in data.stratified_limit(rows, 30, "domain", 0)]
    assert harness.hub_selection(tasks, len(rows), 0, field) is None  # everything: no selection handed over
