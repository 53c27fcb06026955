"""MATH (5,000 problems, 4 Minerva shots), generative (``tasks/math.yaml`` mirrors ``minerva_math``).

The headline is exact match of the boxed answer; eval.json adds lm-eval's equivalence checks (``math_equiv``).
"""

from __future__ import annotations

from coloc_ray.evaluation import data, offline
from coloc_ray.evaluation.registry import Benchmark, register_benchmark


def boxed_exact_match(item: dict, doc: dict, text: str) -> None:
    """Boxed EM, the offline task's metric, with ``--source hub`` too: there lm-eval's own ``exact_match`` is its
    sympy check of the "final answer is" line (:func:`equivalence` adds lm-eval's checks as separate columns)."""
    from coloc_ray.evaluation.tasks.utils import math_answer, math_process_results

    item["prediction"] = math_answer(text)  # what exact match compared: the normalised final answer
    item["correct"] = bool(math_process_results(doc, [text])["exact_match"])


def equivalence(cases: list[dict]) -> list[dict]:
    """lm-eval's equivalence checks (``is_equiv``, ``math_verify``) of every item, beside boxed EM."""
    from coloc_ray.evaluation import math_equiv

    return math_equiv.score([{"answer": c["doc"]["answer"], "solution": c["doc"].get("solution"),
                              "generation": c["generation"], "prediction": c["prediction"]} for c in cases])


BENCHMARK = register_benchmark(Benchmark(
    "math", "lmeval", "minerva_math", 4, "boxed_exact_match", lm_metric="exact_match", stratum="type",
    generative=True, label="MATH (boxed EM)", load=lambda: (data.load_math(), None), render=offline.render_zero_shot,
    rescore=boxed_exact_match, item_extras=equivalence))
