"""GPQA main, 0-shot, log-likelihood over (A)-(D) (``tasks/gpqa.yaml`` mirrors ``gpqa_main_zeroshot``).

``--limit`` spreads items over the three domains; with ``--source hub`` the domain is the doc field
``High-level domain`` inside lm-eval's one task.
"""

from __future__ import annotations

from coloc_ray.evaluation import data, offline
from coloc_ray.evaluation.registry import Benchmark, register_benchmark

BENCHMARK = register_benchmark(Benchmark(
    "gpqa", "lmeval", "gpqa_main_zeroshot", 0, "accuracy", stratum="domain", hub_stratum="High-level domain",
    label="GPQA", load=lambda: (data.load_gpqa(), None), render=offline.render_zero_shot))
