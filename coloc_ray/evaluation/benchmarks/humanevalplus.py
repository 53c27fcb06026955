"""HumanEval+ (164 problems, pass@1, greedy), generated and run in EvalPlus's sandbox (``humanevalplus.py``).

Not an lm-eval task: no renderer; ``--source hub`` reads the same offline copy.
"""

from __future__ import annotations

from coloc_ray.evaluation import data
from coloc_ray.evaluation.registry import Benchmark, register_benchmark

BENCHMARK = register_benchmark(Benchmark(
    "humanevalplus", "evalplus", "", 0, "pass@1", generative=True, label="HumanEval+",
    load=lambda: (data.load_humanevalplus(), None)))
