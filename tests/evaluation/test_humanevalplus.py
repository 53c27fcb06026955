"""HumanEval+ through EvalPlus: the sandbox scores canonical code 100 %, wrong code 0 %, and an infinite loop
fails within EvalPlus's time limits instead of hanging; prompts are EvalPlus's own."""

from __future__ import annotations

import time

import pytest

from coloc_ray.evaluation import data
from coloc_ray.evaluation import humanevalplus as hp

IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/7"]


@pytest.fixture(scope="module")
def problems():
    return {t["task_id"]: t for t in data.load_humanevalplus()}


def test_sandbox_scores_canonical_right_and_wrong_and_loop_wrong(problems):
    sols = {f"{i}": problems[i]["prompt"] + problems[i]["canonical_solution"] for i in IDS}
    ok = hp.score_solutions(sols)
    assert all(ok[i]["passed"] and ok[i]["base"] == "pass" and ok[i]["plus"] == "pass" for i in IDS)

    wrong = {
        "HumanEval/0": problems["HumanEval/0"]["prompt"] + "    return True\n",
        "HumanEval/2": problems["HumanEval/2"]["prompt"] + "    return float(int(number)) + 0.5\n",
        "HumanEval/7": problems["HumanEval/7"]["prompt"] + "    while True:\n        pass\n",
    }
    t = time.time()
    bad = hp.score_solutions(wrong, timeout_s=240)
    assert not any(bad[i]["passed"] for i in IDS)
    assert bad["HumanEval/7"]["base"] != "pass"
    assert time.time() - t < 240  # the loop was cut by EvalPlus's limits, not by our outer timeout


def test_prompts_follow_evalplus_codegen(tiny, problems):
    task = problems["HumanEval/0"]
    assert hp.resolve_style(tiny.tokenizer) == "chat"  # tiny-gqa has a ChatML template, like SmolLM2
    chat = hp.build_prompt(task["prompt"], tiny.tokenizer, "chat")
    assert hp.INSTRUCTION_PREFIX in chat and chat.endswith("```python\n")
    assert task["prompt"].strip() in chat
    assert hp.build_prompt(task["prompt"], tiny.tokenizer, "completion") == task["prompt"].strip() + "\n"
    assert "\n```\n" in hp.stop_strings("chat") and "\ndef " in hp.stop_strings("completion")


def test_sanitizer_extracts_the_function_from_chat_output(problems):
    task = problems["HumanEval/0"]
    out = "Here you go:\n```python\n" + task["prompt"] + task["canonical_solution"] + "```\nThanks"
    code = hp.sanitize_solution(task, "", out, "chat")
    assert "def has_close_elements" in code and "Thanks" not in code
    assert hp.score_solutions({"HumanEval/0": code})["HumanEval/0"]["passed"]


def test_batched_generation_equals_unbatched(tiny):
    prompts = ["def add(a, b):\n", "x = [1, 2, 3]\nfor i in x:\n    print("]
    one = [hp.generate_hf(tiny.model, tiny.tokenizer, [p], 12, 1, ["\n\n"])[0] for p in prompts]
    both = hp.generate_hf(tiny.model, tiny.tokenizer, prompts, 12, 2, ["\n\n"])
    assert both == one
