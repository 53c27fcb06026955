"""The benchmarks ``coloc eval`` knows: a dict plus :func:`register_benchmark` (STYLE 4).

Each entry says how the benchmark is run (an lm-eval task or EvalPlus), which standard lm-eval task it
mirrors (METHOD 8), its shots, its headline metric and how ``--limit`` stratifies it.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# METHOD 8. MGSM's headline filter is lm-eval's flexible-extract (the number anywhere in the answer line);
# small models rarely emit a bare number, and the strict "remove_whitespace" filter would score ~0.
register_benchmark(Benchmark("mmlu", "lmeval", "mmlu", 5, "accuracy", stratum="subject"))
register_benchmark(Benchmark("gpqa", "lmeval", "gpqa_main_zeroshot", 0, "accuracy", stratum="domain",
                             hub_stratum="High-level domain"))
register_benchmark(Benchmark("humanevalplus", "evalplus", "", 0, "pass@1", generative=True))
# MATH's headline is exact match of the boxed answer; eval.json adds lm-eval's equivalence checks (math_equiv).
register_benchmark(Benchmark("math", "lmeval", "minerva_math", 4, "boxed_exact_match", lm_metric="exact_match",
                             stratum="type", generative=True))
register_benchmark(Benchmark("mgsm", "lmeval", "mgsm_direct", 8, "accuracy", lm_metric="exact_match",
                             lm_filter="flexible-extract", stratum="lang", macro=True, generative=True))
register_benchmark(Benchmark("arc_challenge", "lmeval", "arc_challenge", 25, "accuracy"))
