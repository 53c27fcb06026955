"""ARC-Challenge, 25 shots drawn from the train split, log-likelihood (``tasks/arc_challenge.yaml`` mirrors
lm-eval's ``arc_challenge``)."""

from __future__ import annotations

from coloc_ray.evaluation import data, offline
from coloc_ray.evaluation.registry import Benchmark, register_benchmark

BENCHMARK = register_benchmark(Benchmark(
    "arc_challenge", "lmeval", "arc_challenge", 25, "accuracy", label="ARC", load=data.load_arc,
    render=offline.render_with_train))
