"""The offline MMLU task scores exactly what lm-eval's standard `mmlu` prompt format would.

Independent reference: the standard prompt strings are built here by hand from lm-eval's
mmlu/default/_default_template_yaml (description, 5 first dev shots, "Answer:" + " A".." D"), each choice is
scored by a plain forward of the model, and the argmax is compared with the task's per-item results.
"""

from __future__ import annotations

import pytest
import torch

from coloc_ray.evaluation import data, harness
from coloc_ray.evaluation.offline import render_tasks
from coloc_ray.evaluation.registry import BENCHMARKS


def _fmt(doc: dict) -> str:
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def standard_prompt(doc: dict, dev: list[dict]) -> str:
    desc = f"The following are multiple choice questions (with answers) about {doc['subject'].replace('_', ' ')}.\n\n"
    shots = "".join(_fmt(d) + " " + "ABCD"[d["answer"]] + "\n\n" for d in dev[:5])
    return desc + shots + _fmt(doc)


def choice_logliks(model, tok, context: str) -> list[float]:
    out = []
    ctx = tok.encode(context)
    for letter in "ABCD":
        whole = tok.encode(context + " " + letter)
        assert whole[: len(ctx)] == ctx
        ids = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        out.append(float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole)))))
    return out


def test_offline_mmlu_equals_hand_built_standard_prompts(tiny, tmp_path):
    bench = BENCHMARKS["mmlu"]
    test, dev = data.load_mmlu()
    items = [r for r in test if r["subject"] in ("anatomy", "virology")][:1] + \
        [r for r in test if r["subject"] == "virology"][:2]
    tasks = render_tasks(bench, items, dev, tmp_path, max_gen_toks=8)
    lm = harness.make_lm(tiny.model, tiny.tokenizer, batch_size=4)
    samples = harness.run_tasks(lm, tasks, include_dir=tmp_path, num_fewshot=None, limit=None, seed=0)
    got = {r["id"]: r for r in harness.samples_to_items(samples, bench)}
    assert set(got) == {r["item_id"] for r in items}
    for doc in items:
        prompt = standard_prompt(doc, dev[doc["subject"]])
        ref = choice_logliks(tiny.model, tiny.tokenizer, prompt)
        row = got[doc["item_id"]]
        assert row["prompt_hash"] == harness.prompt_hash(prompt)
        assert row["loglikelihoods"] == pytest.approx(ref, abs=1e-3)
        assert row["prediction"] == max(range(4), key=lambda i: ref[i])
        assert row["correct"] == (row["prediction"] == doc["answer"]) and row["target"] == doc["answer"]
