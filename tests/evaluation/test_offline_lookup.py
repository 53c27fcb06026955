"""A benchmark registered without its offline pieces (``Benchmark.load`` / ``Benchmark.render``): one line naming
it, what is missing and the benchmarks that have one, instead of a bare error after validation passed."""

from __future__ import annotations

import pytest

from coloc_ray.errors import UserError
from coloc_ray.evaluation import offline
from coloc_ray.evaluation.registry import BENCHMARKS, Benchmark, get_benchmarks


@pytest.fixture()
def newbench(monkeypatch):
    bench = Benchmark("newbench", "lmeval", "", 0, "accuracy")
    monkeypatch.setitem(BENCHMARKS, "newbench", bench)  # registered, then removed again
    return bench


def test_registered_without_offline_loader_is_one_line_with_valid_names(newbench):
    assert get_benchmarks("newbench") == [newbench]  # validation accepts it
    with pytest.raises(UserError) as e:
        offline.load_items(newbench, None, 0)
    msg = str(e.value)
    assert "\n" not in msg
    assert "'newbench'" in msg and "offline loader" in msg and "coloc_ray/evaluation/benchmarks/" in msg
    assert all(n in msg for n in BENCHMARKS if n != "newbench")  # every shipped benchmark has a loader


def test_loader_without_lm_eval_task_is_one_line_with_valid_names(monkeypatch, tmp_path):
    bench = Benchmark("newbench", "lmeval", "", 0, "accuracy", load=lambda: ([{"id": "x"}], None))
    monkeypatch.setitem(BENCHMARKS, "newbench", bench)
    items, shots = offline.load_items(bench, None, 0)
    assert items == [{"id": "x"}] and shots is None
    with pytest.raises(UserError) as e:
        offline.render_tasks(bench, items, shots, tmp_path, 16)
    msg = str(e.value)
    assert "\n" not in msg and "'newbench'" in msg and "lm-eval task" in msg
    assert all(n in msg for n in ("arc_challenge", "mmlu", "gpqa", "math", "mgsm")) and "humanevalplus" not in msg


def test_every_registered_benchmark_has_its_offline_pieces():
    """Each shipped benchmark loads offline; each lm-eval one renders (its module sets both)."""
    assert BENCHMARKS and all(b.load is not None for b in BENCHMARKS.values())
    assert {n for n, b in BENCHMARKS.items() if b.render is not None} == {
        n for n, b in BENCHMARKS.items() if b.runner == "lmeval"}
