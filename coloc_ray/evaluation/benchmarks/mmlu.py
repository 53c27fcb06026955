"""MMLU (57 subjects, 5 shots = the first 5 dev questions of the subject), log-likelihood over A-D.

Offline: one lm-eval task per subject present after ``--limit`` (``tasks/mmlu.yaml``), mirroring lm-eval's
``mmlu_<subject>``; accuracy over all items equals the standard group's size-weighted mean.
"""

from __future__ import annotations

import json

from coloc_ray.evaluation import data, offline
from coloc_ray.evaluation.registry import Benchmark, register_benchmark


def _fields(subject: str) -> dict:
    text = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return {"description": json.dumps(text)}


def render(d, name: str, items, shots, max_gen_toks: int) -> list[str]:
    return offline.render_per_stratum(d, name, items, shots, "subject", _fields, shot_key="dev_file")


BENCHMARK = register_benchmark(Benchmark(
    "mmlu", "lmeval", "mmlu", 5, "accuracy", stratum="subject", label="MMLU", load=data.load_mmlu, render=render))
