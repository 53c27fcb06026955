"""One registry for benchmarks: every list of benchmarks (eval and study defaults, the report's order and labels,
the offline loaders and renderers) is read from it, so a benchmark registered once is everywhere."""

from __future__ import annotations

import pytest

from coloc_ray.errors import UserError
from coloc_ray.evaluation import offline
from coloc_ray.evaluation.benchmarks import MODULES
from coloc_ray.evaluation.registry import BENCHMARKS, Benchmark, get_benchmarks, register_benchmark

SHIPPED = ["mmlu", "gpqa", "humanevalplus", "math", "mgsm", "arc_challenge"]
LABELS = {"mmlu": "MMLU", "gpqa": "GPQA", "humanevalplus": "HumanEval+", "math": "MATH (boxed EM)", "mgsm": "MGSM",
          "arc_challenge": "ARC"}


@pytest.fixture()
def extra(monkeypatch, tmp_path):
    """A made-up benchmark registered the documented way (removed again after the test)."""
    monkeypatch.setattr("coloc_ray.evaluation.registry.BENCHMARKS", dict(BENCHMARKS))
    from coloc_ray.evaluation import registry

    bench = register_benchmark(Benchmark("toy", "lmeval", "", 0, "accuracy", label="Toy",
                                         load=lambda: ([{"item_id": "t/0"}], None)))
    assert "toy" in registry.BENCHMARKS
    return bench


def test_shipped_modules_register_in_order_with_their_labels():
    # The shipped six first, in this order (a new benchmark module appends itself, so this needs no edit).
    assert list(MODULES)[:6] == SHIPPED == list(BENCHMARKS)[:6] and len(MODULES) == len(BENCHMARKS)
    assert {n: BENCHMARKS[n].label for n in SHIPPED} == LABELS
    assert all(b.__module__ != __name__ for b in BENCHMARKS.values())


def test_every_list_of_benchmarks_reads_the_registry(extra):
    from coloc_ray.ablation.study_config import EvalSettings
    from coloc_ray.evaluation.config import EvalConfig
    from coloc_ray.evaluation.registry import benchmark_labels

    names = [*BENCHMARKS, "toy"]  # every registered benchmark, in order (the shipped six first)
    assert names[:6] == SHIPPED
    assert EvalConfig(model="tiny-gqa").benchmarks == names
    assert EvalSettings().benchmarks == names
    assert EvalConfig(model="tiny-gqa", benchmarks="toy").benchmarks == ["toy"]
    assert benchmark_labels()["toy"] == "Toy"
    assert offline.load_items(extra, None, 0) == ([{"item_id": "t/0"}], None)


def test_report_labels_and_order_come_from_the_registry():
    from coloc_ray.report.build import BENCH_LABELS
    from coloc_ray.report.results import BENCH_ORDER

    assert BENCH_ORDER == tuple(BENCHMARKS) and BENCH_ORDER[:6] == tuple(SHIPPED)
    assert {k: BENCH_LABELS[k] for k in SHIPPED} == LABELS


def test_unknown_benchmark_is_one_line_listing_the_valid_names():
    with pytest.raises(UserError) as e:
        get_benchmarks("mmlu,hellaswag")
    msg = str(e.value)
    assert "\n" not in msg and "'hellaswag'" in msg and all(n in msg for n in SHIPPED)


def test_unknown_benchmark_in_a_study_is_one_line_listing_the_valid_names():
    from coloc_ray.ablation.study_config import StudyConfig, validate_study

    cfg = StudyConfig(name="x", model="tiny-gqa", evaluation={"benchmarks": ["mmlu", "hellaswag"]})
    errs = [e for e in validate_study(cfg, num_layers=4, stage_configs=False) if "hellaswag" in e]
    assert len(errs) == 1 and "\n" not in errs[0] and all(n in errs[0] for n in SHIPPED)
