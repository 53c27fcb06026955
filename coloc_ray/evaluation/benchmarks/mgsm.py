"""MGSM (11 languages, 8 shots per language), generative, macro-averaged over languages (METHOD 8).

The headline filter is lm-eval's flexible-extract (the number anywhere in the answer line): small models rarely
emit a bare number, and the strict "remove_whitespace" filter would score ~0. Offline: one task per language
(``tasks/mgsm.yaml`` mirrors ``mgsm_direct_<lang>``).
"""

from __future__ import annotations

import json

from coloc_ray.evaluation import data, offline
from coloc_ray.evaluation.registry import Benchmark, register_benchmark


def _fields(lang: str, max_gen_toks: int) -> dict:
    # lm-eval's own table of localized prompt words, so the prompt is the standard task's to the character.
    from lm_eval.tasks.mgsm.utils import LANGUAGES

    q, a = LANGUAGES[lang]["QUESTION"], LANGUAGES[lang]["DIRECT"]
    text = (f'{{% if answer is not none %}}{{{{question+"\\n{a}"}}}}'
            f'{{% else %}}{{{{"{q} "+question+"\\n{a}"}}}}{{% endif %}}')
    return {"doc_to_text": json.dumps(text, ensure_ascii=False), "max_gen_toks": str(max_gen_toks),
            "until": json.dumps([q, "</s>", "<|im_end|>"], ensure_ascii=False)}


def render(d, name: str, items, shots, max_gen_toks: int) -> list[str]:
    return offline.render_per_stratum(d, name, items, shots, "lang", lambda s: _fields(s, max_gen_toks))


BENCHMARK = register_benchmark(Benchmark(
    "mgsm", "lmeval", "mgsm_direct", 8, "accuracy", lm_metric="exact_match", lm_filter="flexible-extract",
    stratum="lang", macro=True, generative=True, label="MGSM", load=data.load_mgsm, render=render))
