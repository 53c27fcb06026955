"""A benchmark registered in registry.py but not in offline.py: one line naming it, what is missing (its offline
loader / lm-eval task) and the benchmarks that have one, instead of a bare KeyError after validation passed."""

from __future__ import annotations

import pytest

from coloc_ray.errors import UserError
from coloc_ray.evaluation import offline
from coloc_ray.evaluation.registry import BENCHMARKS, Benchmark, get_benchmarks


@pytest.fixture()
def newbench(monkeypatch):
    bench = Benchmark("newbench", "lmeval", "", 0, "accuracy")
    monkeypatch.setitem(BENCHMARKS, "newbench", bench)  # registered the documented way, then removed again
    return bench


def test_registered_without_offline_loader_is_one_line_with_valid_names(newbench):
    assert get_benchmarks("newbench") == [newbench]  # validation accepts it
    with pytest.raises(UserError) as e:
        offline.load_items(newbench, None, 0)
    msg = str(e.value)
    assert "\n" not in msg
    assert "'newbench'" in msg and "offline loader" in msg and "coloc_ray/evaluation/offline.py" in msg
    assert all(n in msg for n in BENCHMARKS if n != "newbench")  # every shipped benchmark has a loader


def test_loader_without_lm_eval_task_is_one_line_with_valid_names(newbench, monkeypatch, tmp_path):
    monkeypatch.setitem(offline.LOADERS, "newbench", lambda: ([{"id": "x"}], None))
    items, shots = offline.load_items(newbench, None, 0)
    assert items == [{"id": "x"}] and shots is None
    with pytest.raises(UserError) as e:
        offline.render_tasks(newbench, items, shots, tmp_path, 16)
    msg = str(e.value)
    assert "\n" not in msg and "'newbench'" in msg and "lm-eval task" in msg
    assert all(n in msg for n in ("arc_challenge", "mmlu", "gpqa", "math", "mgsm")) and "humanevalplus" not in msg


def test_every_registered_benchmark_has_its_offline_pieces():
    """The shipped registry and offline.py agree (each benchmark loads; each lm-eval one renders)."""
    assert set(offline.LOADERS) == set(BENCHMARKS)
    assert set(offline.RENDERERS) == {n for n, b in BENCHMARKS.items() if b.runner == "lmeval"}
