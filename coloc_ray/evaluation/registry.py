"""The benchmarks ``coloc eval`` knows: a dict plus :func:`register_benchmark` (STYLE 4).

Each entry says how the benchmark is run (an lm-eval task or EvalPlus), which standard lm-eval task it
mirrors (METHOD 8), its shots, its headline metric, how ``--limit`` stratifies it, its report label, and how
its offline items are loaded and rendered. Every benchmark lives in its own module under
``coloc_ray/evaluation/benchmarks/`` and registers itself there; the package's ``__init__`` imports them in
the default order. Everything else that lists benchmarks (the eval and study defaults, the report's order and
labels, the offline loaders and renderers) reads this registry (CONTRIBUTING.md: adding a benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from coloc_ray.errors import UserError


@dataclass(frozen=True)
class Benchmark:
    """One evaluation benchmark.

    Attributes:
        name: registry key (``--benchmarks``).
        runner: ``lmeval`` (an lm-eval task) or ``evalplus`` (HumanEval+ through EvalPlus).
        hub_task: the standard lm-eval task name used with ``--source hub`` (empty if none).
        shots: few-shot examples in the prompt.
        metric: the headline metric, as it appears in eval.json.
        lm_metric: the lm-eval per-sample metric key that gives ``correct``.
        lm_filter: the lm-eval filter whose result is scored (``none`` for log-likelihood tasks).
        stratum: what ``--limit`` spreads items across (subject, domain, type, language), or ``None``.
        hub_stratum: with ``--source hub``, the doc field that stratifies inside one lm-eval task (GPQA's
            domain); a benchmark made of several lm-eval tasks (MMLU, MATH, MGSM) is stratified by task.
        macro: score = mean over strata of the stratum means (MGSM: mean over languages).
        generative: scored on generated text (runs on the vLLM engine with ``--backend vllm``), else on
            log-likelihoods.
        label: the name in the report's tables (default: ``name``).
        load: ``() -> (items, few-shot source)`` from the offline data (None: no offline copy).
        render: ``(include_dir, name, items, shots, max_gen_toks) -> [lm-eval task names]``: writes the offline
            task YAMLs (an ``lmeval`` benchmark; the shared shapes are in ``offline.py``).
        rescore: ``(item, doc, generated text) -> None``: re-scores one item from its lm-eval sample in place
            (MATH: boxed exact match, also where lm-eval's hub task scores another way); None: lm-eval's score.
        item_extras: ``([{"doc", "generation", "prediction"}]) -> [{column: value}]``: further per-item columns,
            scored in one batch (MATH: lm-eval's equivalence checks); None: no further columns.
    """

    name: str
    runner: str
    hub_task: str
    shots: int
    metric: str
    lm_metric: str = "acc"
    lm_filter: str = "none"
    stratum: str | None = None
    hub_stratum: str | None = None
    macro: bool = False
    generative: bool = False
    label: str = ""
    load: Callable[[], tuple[list[dict], object]] | None = None
    render: Callable[..., list[str]] | None = None
    rescore: Callable[[dict, dict, str], None] | None = None
    item_extras: Callable[[list[dict]], list[dict]] | None = None

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(bench: Benchmark) -> Benchmark:
    """Add (or replace) a benchmark; returns it so registration is a one-liner."""
    if bench.runner not in ("lmeval", "evalplus"):
        raise ValueError(f"benchmark {bench.name!r}: runner must be 'lmeval' or 'evalplus', got {bench.runner!r}")
    BENCHMARKS[bench.name] = bench
    return bench


def get_benchmarks(names) -> list[Benchmark]:
    """Resolve names (a list or a comma-separated string) in order; UserError lists the valid ones."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise UserError(f"--benchmarks is empty: give one or more of {', '.join(BENCHMARKS)}")
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        raise UserError(f"--benchmarks: unknown benchmark(s) {', '.join(map(repr, bad))}; "
                        f"valid: {', '.join(BENCHMARKS)}")
    return [BENCHMARKS[n] for n in dict.fromkeys(names)]


def benchmark_names() -> list[str]:
    """The registered names in registration order (the default ``benchmarks`` of an eval and a study)."""
    return list(BENCHMARKS)


def benchmark_labels() -> dict[str, str]:
    """``{name: label}`` for the report's tables."""
    return {n: b.label for n, b in BENCHMARKS.items()}


# The shipped benchmarks register themselves, one module each (imported last: they import this module).
from coloc_ray.evaluation import benchmarks  # noqa: E402,F401
