"""MATH (5,000 problems, 4 Minerva shots), generative (``tasks/math.yaml`` mirrors ``minerva_math``).

The headline is exact match of the boxed answer; eval.json adds lm-eval's equivalence checks (``math_equiv``).
"""

from __future__ import annotations

from coloc_ray.evaluation import data, offline
from coloc_ray.evaluation.registry import Benchmark, register_benchmark

BENCHMARK = register_benchmark(Benchmark(
    "math", "lmeval", "minerva_math", 4, "boxed_exact_match", lm_metric="exact_match", stratum="type",
    generative=True, label="MATH (boxed EM)", load=lambda: (data.load_math(), None), render=offline.render_zero_shot))
